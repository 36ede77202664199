import pickle

import numpy as np
import pytest
import torch

from oodlab.models import load_model, read_state_dict
from oodlab.models.loading import same_model
from oodlab.utils.errors import IncompatibleError, InputError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-vit", seed=3)


def _features(loaded, x):
    with torch.inference_mode():
        return loaded.model.encode_image(x).numpy()


def test_random_init_is_seeded_and_recorded(tiny):
    again = load_model("tiny-vit", seed=3)
    other = load_model("tiny-vit", seed=4)
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_array_equal(_features(tiny, x), _features(again, x))
    assert not np.allclose(_features(tiny, x), _features(other, x))
    assert tiny.identity["weights"] == {"source": "random-init", "seed": 3}
    assert tiny.identity["architecture"] == "tiny-vit" and tiny.identity["embed_dim"] == 128
    assert tiny.identity["preprocess"]["size"] == [32, 32]


@pytest.mark.parametrize("fmt", ["training", "plain", "safetensors"])
def test_checkpoint_formats_load_the_same_weights(tiny, tmp_path, fmt):
    state = tiny.model.state_dict()
    if fmt == "training":  # open_clip_train's checkpoint, saved from a DDP model
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "name": "x", "state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "plain":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_model("tiny-vit", path, seed=99)  # the seed must not matter with weights
    x = torch.randn(3, 3, 32, 32)
    np.testing.assert_array_equal(_features(loaded, x), _features(tiny, x))
    assert loaded.identity["weights"]["source"] == "file" and len(loaded.identity["weights"]["sha256"]) == 64
    assert same_model(loaded.identity, load_model("tiny-vit", path).identity)
    assert not same_model(loaded.identity, tiny.identity)


@pytest.mark.parametrize("arch, problem", [("tiny-rn", r"missing .*unexpected"), ("narrow", r"shape mismatch")])
def test_mismatched_architecture_is_a_clear_error(tiny, extra_configs, tmp_path, arch, problem):
    arch = extra_configs.get(arch, arch)
    path = tmp_path / "vit.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(IncompatibleError, match=rf"does not match architecture '{arch}'.*{problem}"):
        load_model(arch, path)


def test_untrusted_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(InputError, match="pickled Python objects besides tensors") as refused:
        read_state_dict(path)
    # torch's own message goes on to advise weights_only=False: the one thing not to do here
    assert "False" not in str(refused.value)
    torch.save({"x": Evil()}, tmp_path / "evil-zip.pt")  # torch's own format: its refusal names the global
    with pytest.raises(InputError, match="pickled Python objects besides tensors.*GLOBAL .*open") as refused:
        read_state_dict(tmp_path / "evil-zip.pt")
    assert "False" not in str(refused.value)
    with pytest.raises(InputError, match="pickled Python objects besides tensors"):
        load_model("tiny-vit", path)
    assert not marker.exists()


def test_bad_names_and_precisions(tmp_path):
    with pytest.raises(InputError, match="unknown architecture"):
        load_model("no-such-model")
    with pytest.raises(InputError, match="unknown precision"):
        load_model("tiny-vit", precision="int3")
    with pytest.raises(InputError, match="not found"):
        load_model("tiny-vit", tmp_path / "missing.pt")


def test_bf16_weights_agree_with_fp32(tiny):
    bf = load_model("tiny-vit", seed=3, precision="bf16")
    x = torch.randn(4, 3, 32, 32)
    a = _features(tiny, x)
    with torch.inference_mode():
        b = bf.model.encode_image(x.bfloat16()).float().numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


# -- open_clip's own loaders as the reference ------------------------------------------------

_OPENAI_TINY = {  # the layout build_model_from_openai_state_dict reads back (64-wide heads, QuickGELU)
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.fixture(scope="module")
def extra_configs(tmp_path_factory):
    """Architectures registered with open_clip for these tests: an OpenAI-layout tiny CLIP,
    tiny-vit at 48 px with a 24-token context (positional embeddings to resize), and tiny-vit
    with a narrower text tower (a wrong architecture)."""
    import json

    import open_clip

    from oodlab.models.registry import CONFIG_DIR

    tiny_vit = json.loads((CONFIG_DIR / "tiny-vit.json").read_text())
    bigger = json.loads(json.dumps(tiny_vit))
    bigger["vision_cfg"]["image_size"] = 48
    bigger["text_cfg"]["context_length"] = 24
    narrow = json.loads(json.dumps(tiny_vit))
    narrow["text_cfg"].update(width=32, heads=1)
    folder = tmp_path_factory.mktemp("configs")
    names = {"openai": "oodlab-test-openai-tiny", "bigger": "oodlab-test-tiny-vit-48",
             "narrow": "oodlab-test-narrow-text"}
    for key, cfg in (("openai", _OPENAI_TINY), ("bigger", bigger), ("narrow", narrow)):
        (folder / f"{names[key]}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return names


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_openai_state_dict_loads_like_open_clip(extra_configs, tmp_path):
    """OpenAI's release as a state dict (``torch.jit.load(...).state_dict()``): half-precision
    linear/conv/attention weights and the scalars input_resolution, context_length, vocab_size."""
    import open_clip

    torch.manual_seed(7)
    source = open_clip.create_model(extra_configs["openai"])
    open_clip.convert_weights_to_lp(source)  # the tensors OpenAI stores in float16
    state = source.state_dict()
    assert {v.dtype for v in state.values()} == {torch.float16, torch.float32}
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai-tiny.pt"
    torch.save(state, path)

    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    loaded = load_model(extra_configs["openai"], path)
    _assert_same_parameters(loaded.model, reference)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(_features(loaded, x), reference.encode_image(x).numpy())
    assert loaded.identity["weights"]["sha256"] == _sha256(path)


def test_positional_embeddings_are_resized_as_open_clip_resizes(tiny, extra_configs, tmp_path):
    import open_clip

    path = tmp_path / "tiny-vit-32px.pt"
    torch.save(tiny.model.state_dict(), path)  # 4x4 patch grid + class token, 16 text positions
    reference = open_clip.create_model(extra_configs["bigger"], pretrained=str(path)).eval()
    loaded = load_model(extra_configs["bigger"], path)
    assert tuple(loaded.model.visual.positional_embedding.shape) == (6 * 6 + 1, 64)
    assert tuple(loaded.model.positional_embedding.shape) == (24, 64)
    _assert_same_parameters(loaded.model, reference)
    x = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        np.testing.assert_array_equal(_features(loaded, x), reference.encode_image(x).numpy())


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(InputError, match="TorchScript archive.*load_openai_model"):
        load_model("tiny-vit", path)


def _model_folder(folder, arch, preprocess=None):
    import json

    from oodlab.models.registry import CONFIG_DIR

    folder.mkdir()
    cfg = {"model_cfg": json.loads((CONFIG_DIR / f"{arch}.json").read_text()), "preprocess_cfg": preprocess or {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


def test_local_dir_loads_like_open_clip(tiny, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    folder = _model_folder(tmp_path / "hub-copy", "tiny-vit", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    weights = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    save_file(weights, str(folder / "open_clip_model.safetensors"))
    torch.save(load_model("tiny-vit", seed=4).model.state_dict(), folder / "open_clip_pytorch_model.bin")
    reference = open_clip.create_model(f"local-dir:{folder}").eval()  # open_clip prefers the safetensors file
    loaded = load_model("tiny-vit", folder)
    _assert_same_parameters(loaded.model, reference)
    assert loaded.identity["weights"]["sha256"] == _sha256(folder / "open_clip_model.safetensors")
    assert loaded.identity["preprocess"]["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("damage", [
    lambda cfg: cfg["model_cfg"].pop("text_cfg"),  # open_clip: KeyError
    lambda cfg: cfg["model_cfg"]["vision_cfg"].update(width=0),  # open_clip: ZeroDivisionError / ValueError
    lambda cfg: cfg["model_cfg"].update(vision_cfg=[1, 2]),  # open_clip: TypeError
    lambda cfg: cfg.pop("model_cfg"),  # open_clip: ValueError
], ids=["no-text-cfg", "zero-width", "cfg-not-a-dict", "no-model-cfg"])
def test_a_broken_model_folder_config_is_a_message(tiny, tmp_path, damage):
    import json

    folder = _model_folder(tmp_path / "broken", "tiny-vit")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    damage(cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.save(tiny.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    with pytest.raises(InputError, match=r"broken: is not an open_clip model folder \(\w+"):
        load_model("tiny-vit", folder)


def test_local_dir_mismatch_is_a_clear_error(tiny, tmp_path):
    folder = _model_folder(tmp_path / "wrong", "tiny-rn")
    torch.save(tiny.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    with pytest.raises(IncompatibleError, match=r"does not match architecture 'local-dir:.*missing.*unexpected"):
        load_model("tiny-rn", folder)
