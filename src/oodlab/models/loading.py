"""Create an open_clip model and load its weights from a local file, strictly.

Weights go through open_clip's own loader (``open_clip.load_checkpoint``), so oodlab loads what
open_clip loads: open_clip state dicts (``.pt``, ``.bin``, ``.pth``), ``.safetensors``, open_clip
*training* checkpoints (``{"state_dict": ..., "epoch": ...}`` with ``module.`` prefixes from DDP),
OpenAI state dicts, with open_clip's key conversions and its resizing of positional embeddings
to the architecture's image size and context length. On top of open_clip, oodlab

- reads every file itself first with ``weights_only=True`` (:func:`read_state_dict`), so what
  reaches open_clip is a file that already loaded as plain tensors: open_clip's reader retries
  ``torch.load`` *without* ``weights_only`` when the first call raises ``TypeError``;
- refuses TorchScript archives (OpenAI's original ``.pt`` release). ``torch.jit.load`` unpickles
  no Python objects, but the archive is a program: its TorchScript code is compiled and run by
  the TorchScript interpreter (a scripted class's ``__setstate__`` runs while loading), which
  PyTorch's security policy says to treat as executable code from an unknown source, and
  ``torch.load(weights_only=True)`` refuses such archives (so open_clip's
  ``create_model(..., pretrained=FILE)`` fails on them too). The error says how to get the same
  weights as a state dict;
- checks the converted state dict against the architecture before anything is copied: a
  mismatch is an :class:`IncompatibleError` listing the missing, unexpected and shape-mismatched
  keys, never a partial load.

Every loaded model carries an *identity* (architecture, checksum of the weights file loaded,
preprocessing, precision) that stages record in their manifests and compare before mixing
artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from oodlab.models.checkpoints import weights_path
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.hashing import sha256_file

log = logging.getLogger(__name__)

#: precision name -> torch dtype name (weights and inputs are cast; ``fp32`` is the reference)
PRECISIONS: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")

_STRIP_PREFIXES = ("module.", "_orig_mod.")

#: scalars OpenAI's CLIP release keeps beside the weights; open_clip drops them from OpenAI
#: state dicts (``load_state_dict`` for TorchScript files, ``build_model_from_openai_state_dict``)
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")

_CONVERT_TORCHSCRIPT = (
    "python -c \"import oodlab, open_clip, torch, sys; "
    "torch.save(open_clip.load_openai_model(sys.argv[1], device='cpu').state_dict(), sys.argv[2])\" "
    "FILE.pt FILE-state.pt"
)


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


def check_compute(device: str, precision: str | None = None, *, here: bool = True) -> None:
    """Refuse a device this torch cannot use, or an unknown precision, before a stage writes.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:i`` (i below the number of visible GPUs).
        precision: one of :data:`PRECISIONS`, or None when the stage has no precision.
        here: the stage computes in this process; False (command lines for another machine):
            only the words are checked, not this machine's GPUs.

    Raises:
        InputError: naming the value and what to pass instead.
    """
    if precision is not None and precision not in PRECISIONS:
        raise InputError(None, f"unknown precision {precision!r}", f"pass --precision {' / '.join(PRECISIONS)}")
    if not _DEVICE.fullmatch(device):
        raise InputError(None, f"unknown device {device!r}", "pass --device cpu, cuda or cuda:i")
    if device == "cpu" or not here:
        return
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise InputError(None, f"device {device!r} requested but this torch {torch.__version__} has {build}",
                         "pass --device cpu, or run where a GPU and a CUDA build of torch are")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise InputError(None, f"device {device!r} requested but {torch.cuda.device_count()} GPU(s) are visible",
                         f"pass --device cuda:0 ... cuda:{torch.cuda.device_count() - 1}")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state dict from a local weights file, never unpickling arbitrary objects.

    Returns:
        parameter name -> tensor, with ``module.`` / ``_orig_mod.`` prefixes removed.

    Raises:
        InputError: the file is missing, unreadable, not a state dict, or a TorchScript archive
            (program code, see the module docstring).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found", "pass the path of a local weights file")
    if path.suffix != ".safetensors" and _is_torchscript(path):
        raise InputError(
            path,
            "is a TorchScript archive (the format of OpenAI's original CLIP release): TorchScript is "
            "program code, run by torch.jit.load, which oodlab does not load (torch.load with "
            "weights_only=True refuses it too)",
            "use the same weights as a state dict (open_clip's hub copies of OpenAI's models, e.g. "
            "timm/vit_base_patch32_clip_224.openai, open_clip_model.safetensors) or, only if you trust "
            f"the file, convert it once with open_clip's OpenAI loader: {_CONVERT_TORCHSCRIPT}; "
            "OpenAI's models use QuickGELU: load them with --model ARCH-quickgelu (e.g. ViT-B-32-quickgelu)",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(
            path,
            f"holds pickled Python objects besides tensors, which oodlab never unpickles ({_refused_global(err)})",
            "use weights saved as a state dict of tensors (torch.save(model.state_dict(), FILE)) or as .safetensors; "
            "a file from an unknown source that needs more than that to load should not be loaded",
        ) from err
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


def _refused_global(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused; the rest of its
    message advises ``weights_only=False``, which is the one thing not to do with such a file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines[-1:] or ["torch.load with weights_only=True refused it"])[0][:300]


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with ``constants.pkl``, the member
    ``torch.jit.save`` writes and ``torch.save`` does not (the test torch.load itself applies)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _mismatches(own: dict[str, tuple[int, ...]], state: dict[str, tuple[int, ...]]) -> str:
    """The keys that keep a state dict from loading strictly into a model, from both sides'
    key -> shape, as one line (empty when none)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {state[k]} vs model {own[k]}" for k in set(own) & set(state) if state[k] != own[k]
    )
    return "; ".join(
        f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if items
    )


def _mismatch_error(path: Path, name: str, details: str) -> IncompatibleError:
    return IncompatibleError(
        path, f"does not match architecture {name!r} ({details})", "pass the --model the checkpoint was trained with"
    )


def _load_weights(model: Any, path: Path, name: str) -> None:
    """Load ``path`` into ``model`` through ``open_clip.load_checkpoint``, strictly.

    open_clip converts the state dict (third-party key layouts, the old text-tower layout, the
    shape of ``logit_scale``, positional-embedding resizing) and loads it in one call, so the
    strict check runs in a load-state-dict pre-hook on the model: it sees the converted dict
    before any tensor is copied, and raising there leaves the model untouched.
    """
    import open_clip

    raw = _shapes(read_state_dict(path))

    def check(module: Any, state: dict[str, Any], prefix: str, *_: Any) -> None:
        own = _shapes(module.state_dict())
        for key in _OPENAI_METADATA:
            if key not in own:
                state.pop(key, None)
        details = _mismatches(own, _shapes(state))
        if details:
            raise _mismatch_error(path, name, details)

    handle = model.register_load_state_dict_pre_hook(check)
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True, device="cpu")
    except IncompatibleError:
        raise
    except Exception as err:  # a conversion open_clip cannot apply to this architecture
        details = _mismatches(_shapes(model.state_dict()), raw)
        raise _mismatch_error(path, name, details or f"{type(err).__name__}: {err}") from err
    finally:
        handle.remove()
    changed = sorted(k for k, shape in _shapes(model.state_dict()).items() if raw.get(k, shape) != shape)
    if changed:
        log.warning("%s: open_clip changed the shape of %s to fit architecture %r", path, changed, name)


def _shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


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
        checkpoint: a weights file (formats: module docstring), such a folder, or an ``oodlab
            train`` run folder (its final complete checkpoint). None: random
            weights drawn with ``seed`` (the identity records it; useful for tests and
            pipelines, not for science).
        device: ``cpu`` or ``cuda[:i]``.
        precision: ``fp32``, ``bf16`` (fast on CPUs with AMX and on GPUs) or ``fp16`` (GPU).

    Raises:
        InputError: unknown architecture or precision, unreadable checkpoint (TorchScript
            archives included), a folder without its config or weights file.
        IncompatibleError: the checkpoint, after open_clip's conversions, does not match the
            architecture (the message lists missing, unexpected and shape-mismatched keys).
    """
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    check_compute(device, precision)
    ckpt = None if checkpoint is None else weights_path(checkpoint)
    # a model folder's own config sets its architecture and tokenizer (context length, HF tokenizer)
    source = f"local-dir:{ckpt}" if ckpt is not None and ckpt.is_dir() else name
    torch.manual_seed(seed)
    with _quiet_open_clip():
        model, ckpt = _create(name, ckpt)
    dtype = getattr(torch, PRECISIONS[precision])
    model = model.to(device=device, dtype=dtype).eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(source)
    embed_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[1])
    identity = model_identity(name, ckpt, seed, precision, cfg, embed_dim)
    return LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, identity=identity)


def _create(name: str, ckpt: Path | None) -> tuple[Any, Path | None]:
    """The model (random weights, or ``ckpt``'s) and the weights file it was loaded from."""
    import open_clip

    if ckpt is not None and ckpt.is_dir():
        try:
            # load_weights=False: the weights go through _load_weights like any file's
            model = open_clip.create_model(f"local-dir:{ckpt}", load_weights=False, pretrained_text=False,
                                           device="cpu")
        except Exception as err:  # a user's config fails open_clip's constructors in many ways (KeyError, TypeError, ...)
            raise InputError(ckpt, f"is not an open_clip model folder ({type(err).__name__}: {err})",
                             "pass a folder with open_clip_config.json (holding model_cfg) and its weights") from err
        weights = _local_dir_weights(ckpt)
        _load_weights(model, weights, f"local-dir:{ckpt}")
        return model, weights
    if name not in open_clip.list_models():
        raise InputError(
            None,
            f"unknown architecture {name!r}",
            "use an open_clip model name (see open_clip.list_models()) or tiny-vit / tiny-rn",
        )
    # pretrained_text=False: no hub text-tower weights under random init or a full checkpoint
    model = open_clip.create_model(name, pretrained=None, pretrained_text=False, device="cpu")
    if ckpt is not None:
        _load_weights(model, ckpt, name)
    return model, ckpt


def _local_dir_weights(folder: str | Path) -> Path:
    """The weights file of an open_clip model folder (``open_clip_config.json`` beside it).

    open_clip's names come first, in open_clip's order of preference (``open_clip_model.safetensors``,
    then ``open_clip_pytorch_model.bin``: the files ``push_to_hf_hub`` writes); without them, the
    folder's one ``.safetensors`` / ``.bin`` / ``.pth`` file. Where open_clip would pick one of
    several other files by name, oodlab asks which.

    Raises:
        InputError: no weights file, or several and none with open_clip's names.
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    folder = Path(folder)
    for fname in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        if (folder / fname).is_file():
            return folder / fname
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth"))
    if len(found) == 1:
        return found[0]
    problem = "holds no weights file" if not found else f"holds several weights files {[p.name for p in found]}"
    raise InputError(folder, problem, f"put the model's weights in it as {HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME})")


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
