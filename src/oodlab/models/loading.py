"""Create an open_clip model and load its weights from a local file, strictly.

Accepted weight files: open_clip / OpenAI state dicts (``.pt``, ``.bin``, ``.pth``),
``.safetensors``, and open_clip *training* checkpoints (``{"state_dict": ..., "epoch": ...}``
with ``module.`` prefixes from DDP). Everything is read with ``weights_only=True``. A checkpoint
that does not match the architecture fails with the list of mismatches; nothing is loaded with
``strict=False``.

Every loaded model carries an *identity* (architecture, weight checksum, preprocessing,
precision) that stages record in their manifests and compare before mixing artifacts.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.hashing import sha256_file

log = logging.getLogger(__name__)

#: precision name -> torch dtype name (weights and inputs are cast; ``fp32`` is the reference)
PRECISIONS: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

_STRIP_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with what is needed to feed it.

    Attributes:
        model: the ``open_clip.CLIP`` module, in eval mode on ``device``.
        preprocess: the open_clip validation transform (PIL image -> float tensor [3, H, W]).
        tokenizer: callable list[str] -> LongTensor [n, context_length].
        identity: JSON-able description (see :func:`model_identity`).
    """

    model: Any
    preprocess: Callable
    tokenizer: Callable
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state dict from a local weights file, never unpickling arbitrary objects.

    Returns:
        parameter name -> tensor, with ``module.`` / ``_orig_mod.`` prefixes removed.

    Raises:
        InputError: the file is missing, unreadable, or not a state dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found", "pass the path of a local weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        raise InputError(
            path,
            f"cannot be read as weights ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
            "pass an open_clip checkpoint, a state dict (.pt/.bin) or a .safetensors file",
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "does not hold a state dict of tensors", "pass a model checkpoint")
    out = {}
    for key, value in obj.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _load_strict(model: Any, state: dict[str, Any], path: Path, name: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        details = "; ".join(
            f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if items
        )
        raise IncompatibleError(
            path,
            f"does not match architecture {name!r} ({details})",
            "pass the --model the checkpoint was trained with",
        )
    model.load_state_dict(state, strict=True)


def model_identity(
    name: str, checkpoint: Path | None, seed: int, precision: str, preprocess_cfg: dict[str, Any], embed_dim: int
) -> dict[str, Any]:
    """The JSON identity recorded in every artifact made with a model."""
    import open_clip

    if checkpoint is None:
        weights: dict[str, Any] = {"source": "random-init", "seed": seed}
    else:
        weights = {"source": "file", "file": str(checkpoint), "sha256": sha256_file(checkpoint)}
    return {
        "architecture": name,
        "weights": weights,
        "embed_dim": embed_dim,
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess_cfg.items()},
        "precision": precision,
        "open_clip_version": open_clip.__version__,
    }


def same_model(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two identities describe the same embedding function (precision aside)."""
    if a is None or b is None:
        return True  # unknown provenance (e.g. a clip-retrieval folder): cannot tell
    keys = ("architecture", "weights", "preprocess")
    wa = {k: a.get(k) for k in keys}
    wb = {k: b.get(k) for k in keys}
    for w in (wa, wb):
        if isinstance(w["weights"], dict):
            w["weights"] = {k: v for k, v in w["weights"].items() if k != "file"}
    return wa == wb


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
) -> LoadedModel:
    """Create open_clip architecture ``name`` with weights from a local ``checkpoint``.

    Args:
        name: any open_clip architecture (``ViT-B-32``, ``RN50``, ...) or an oodlab tiny config
            (``tiny-vit``, ``tiny-rn``). A folder with ``open_clip_config.json`` passed as
            ``checkpoint`` brings its own architecture (open_clip's ``local-dir:``).
        checkpoint: a weights file or such a folder. None: random weights drawn with ``seed``
            (the identity records it; useful for tests and pipelines, not for science).
        device: ``cpu`` or ``cuda[:i]``.
        precision: ``fp32``, ``bf16`` (fast on CPUs with AMX and on GPUs) or ``fp16`` (GPU).

    Raises:
        InputError: unknown architecture or precision, unreadable or mismatched checkpoint.
    """
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    if precision not in PRECISIONS:
        raise InputError(None, f"unknown precision {precision!r}", f"use one of {sorted(PRECISIONS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} requested but CUDA is not available", "use --device cpu")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    torch.manual_seed(seed)
    with _quiet_open_clip():
        model, ckpt = _create(name, ckpt)
    dtype = getattr(torch, PRECISIONS[precision])
    model = model.to(device=device, dtype=dtype).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(name)
    embed_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[1])
    identity = model_identity(name, ckpt, seed, precision, cfg, embed_dim)
    return LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, identity=identity)


def _create(name: str, ckpt: Path | None) -> tuple[Any, Path | None]:
    import open_clip

    if ckpt is not None and ckpt.is_dir():
        model = open_clip.create_model(f"local-dir:{ckpt}", device="cpu")
        weights_file = open_clip.factory._find_checkpoint_in_dir(ckpt)
        return model, (Path(weights_file) if weights_file else ckpt)
    if name not in open_clip.list_models():
        raise InputError(
            None,
            f"unknown architecture {name!r}",
            "use an open_clip model name (see open_clip.list_models()) or tiny-vit / tiny-rn",
        )
    model = open_clip.create_model(name, pretrained=None, device="cpu")
    if ckpt is not None:
        _load_strict(model, read_state_dict(ckpt), ckpt, name)
    return model, ckpt


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for every model created without hub weights; oodlab loads its
    weights itself, so the notice is noise."""
    flt = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)
