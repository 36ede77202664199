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
    x = torch.randn(2, 3, 64, 64)
    np.testing.assert_array_equal(_features(tiny, x), _features(again, x))
    assert not np.allclose(_features(tiny, x), _features(other, x))
    assert tiny.identity["weights"] == {"source": "random-init", "seed": 3}
    assert tiny.identity["architecture"] == "tiny-vit" and tiny.identity["embed_dim"] == 128
    assert tiny.identity["preprocess"]["size"] == [64, 64]


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
    x = torch.randn(3, 3, 64, 64)
    np.testing.assert_array_equal(_features(loaded, x), _features(tiny, x))
    assert loaded.identity["weights"]["source"] == "file" and len(loaded.identity["weights"]["sha256"]) == 64
    assert same_model(loaded.identity, load_model("tiny-vit", path).identity)
    assert not same_model(loaded.identity, tiny.identity)


def test_mismatched_architecture_is_a_clear_error(tiny, tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(IncompatibleError, match=r"does not match architecture 'tiny-rn'.*missing"):
        load_model("tiny-rn", path)


def test_untrusted_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(InputError, match="cannot be read as weights"):
        read_state_dict(path)
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
    x = torch.randn(4, 3, 64, 64)
    a = _features(tiny, x)
    with torch.inference_mode():
        b = bf.model.encode_image(x.bfloat16()).float().numpy()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
