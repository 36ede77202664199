"""oodlab's environment fixes (src/oodlab/_compat.py) against torchvision's own loader, run in a
process that never imports oodlab, and against transforms computed here with Pillow and numpy."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

#: CLIP's normalisation (the CLIP paper's released preprocessing), written out here
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])

# torchvision's own loader in a process that never imports oodlab: either torchvision imports and
# reports whether its compiled ops loaded, or the import dies for want of them
_PROBE_WITHOUT_OODLAB = """
import sys
try:
    import torchvision.extension
except RuntimeError as exc:
    assert "torchvision::" in str(exc), exc  # any other failure is not the one oodlab handles
    print("unusable")
    sys.exit()
assert "oodlab" not in sys.modules
print("usable" if torchvision.extension._has_ops() else "unusable")
"""

# after `import oodlab`: its patch flag, torchvision's nms where the compiled ops load, a tensor
# transform of torchvision and open_clip's eval transform, on a random 96 x 96 image
_AFTER_OODLAB = """
import json
import numpy as np
from PIL import Image
import oodlab
import torch, torchvision, torchvision.transforms.functional as F, open_clip
from oodlab import _compat
pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
out = {"patched": _compat.torchvision_ops_patched,
       "open_clip": open_clip.image_transform(64, is_train=False)(Image.fromarray(pixels)).numpy().tolist(),
       "hflip": F.hflip(torch.from_numpy(pixels).permute(2, 0, 1)).permute(1, 2, 0).numpy().tolist()}
if not out["patched"]:
    boxes = torch.tensor(json.loads(%r), dtype=torch.float32)
    out["nms"] = torchvision.ops.nms(boxes, torch.tensor(json.loads(%r)), 0.5).tolist()
print(json.dumps(out))
"""

BOXES = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10], [21, 20, 31, 30]]
SCORES = [0.9, 0.8, 0.7, 0.95, 0.6]


def _run(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression written out: highest score first, drop IoU > iou."""
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        overlaps = []
        for j in kept:
            w = min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0])
            h = min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1])
            inter = max(w, 0) * max(h, 0)
            overlaps.append(inter / (area(boxes[i]) + area(boxes[j]) - inter))
        if not overlaps or max(overlaps) <= iou:
            kept.append(int(i))
    return kept


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


def test_patch_is_applied_exactly_when_torchvision_cannot_load_its_ops():
    probe = _run(_PROBE_WITHOUT_OODLAB)
    assert probe.returncode == 0, probe.stderr
    usable = probe.stdout.strip() == "usable"

    result = _run(_AFTER_OODLAB % (json.dumps(BOXES), json.dumps(SCORES)))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["patched"] is (not usable)
    if usable:  # the patch stayed away: torchvision's compiled nms still computes
        assert out["nms"] == _nms(np.array(BOXES, float), np.array(SCORES), 0.5)

    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.array(out["hflip"]), pixels[:, ::-1])
    resized = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BICUBIC), np.float64) / 255
    expected = ((resized - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(np.array(out["open_clip"]), expected, atol=1e-5)


def test_hf_hub_offline_by_default_but_user_setting_wins():
    code = "import oodlab, os; print(os.environ['HF_HUB_OFFLINE'])"
    assert _run(code).stdout.strip() == "1"
    assert _run(code, {"HF_HUB_OFFLINE": "0"}).stdout.strip() == "0"
