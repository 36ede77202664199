import subprocess
import sys


def _run(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_importing_oodlab_makes_torchvision_open_clip_and_trainer_importable():
    code = (
        "import oodlab, sys\n"
        "assert 'torch' not in sys.modules, 'importing oodlab must not import torch'\n"
        "import torchvision.transforms, open_clip, timm, open_clip_train.main\n"
        "from oodlab import _compat\n"
        "print(_compat.torchvision_ops_patched)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("True", "False")


def test_patch_is_applied_only_when_the_extension_cannot_load():
    code = (
        "import oodlab, torchvision\n"
        "from oodlab import _compat\n"
        "loads = _compat._torchvision_extension_loads()\n"
        "print(loads, _compat.torchvision_ops_patched)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    loads, patched = result.stdout.split()
    assert patched == str(loads == "False")


def test_hf_hub_offline_by_default_but_user_setting_wins():
    code = "import oodlab, os; print(os.environ['HF_HUB_OFFLINE'])"
    assert _run(code).stdout.strip() == "1"
    assert _run(code, {"HF_HUB_OFFLINE": "0"}).stdout.strip() == "0"
