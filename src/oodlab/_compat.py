"""Environment compatibility, applied once when :mod:`oodlab` is imported.

Two problems of CPU-only machines are handled here and nowhere else:

1. **torchvision without its compiled ops.** The only torchvision wheel on PyPI for Linux x86_64
   is a CUDA build. Next to the CPU build of torch its extension (``_C.so``) cannot load, and
   ``import torchvision`` then dies in ``_meta_registrations.py``, which registers a fake kernel
   for ``torchvision::nms`` without checking that the op exists. open_clip, timm and open_clip's
   trainer all import torchvision. The fix is to *define* the two op schemas that module needs
   (``nms`` and ``qnms``) before torchvision is first imported, and only when its extension
   cannot load. Transforms and models then work; the compiled detection ops and
   ``torchvision.io`` codecs do not (oodlab decodes with Pillow). On a normal install the
   extension loads and nothing is changed.

   The check runs lazily, from an import hook, so importing oodlab does not import torch.

2. **Hub requests that hang.** open_clip asks the Hugging Face hub for weights and configs; with
   no network a request retries for about 51 s before failing. oodlab never loads weights from a
   hub, so ``HF_HUB_OFFLINE=1`` is set unless the user set it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

_OPS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

#: Whether the torchvision schemas had to be defined by oodlab (None: not checked yet).
torchvision_ops_patched: bool | None = None


def _torchvision_extension_loads() -> bool:
    """Try to load torchvision's compiled extension without importing torchvision."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    for location in spec.submodule_search_locations:
        for lib in sorted(Path(location).glob("_C*.so")) + sorted(Path(location).glob("_C*.pyd")):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def define_missing_torchvision_ops() -> bool:
    """Define the torchvision op schemas when its compiled extension cannot load.

    Returns:
        True when the schemas were defined here, False when nothing was needed.
    """
    global torchvision_ops_patched
    if torchvision_ops_patched is not None:
        return torchvision_ops_patched
    torchvision_ops_patched = False
    if "torchvision" in sys.modules or _torchvision_extension_loads():
        return False
    import torch

    for name, schema in _OPS.items():
        try:
            torch.library.define(f"torchvision::{name}", schema)
        except RuntimeError:  # already defined (e.g. by a second copy of this module)
            continue
    torchvision_ops_patched = True
    return True


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    """Runs :func:`define_missing_torchvision_ops` just before torchvision is first imported."""

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib protocol
        if fullname == "torchvision":
            uninstall_hook()
            define_missing_torchvision_ops()
        return None  # let the regular finders import it


_HOOK = _TorchvisionImportHook()


def uninstall_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    """Apply the compatibility settings (idempotent)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "torchvision" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
