"""Decoding evaluation images into model-ready batches, with an optional in-memory cache.

DataLoader workers run the PIL steps of the model's eval transform (resize, crop, RGB) and ship
uint8 arrays; the main process turns a whole batch into normalised floats, exactly as the
transform's ``ToTensor`` + ``Normalize`` would. Decoded uint8 batches of a dataset may be kept
(up to a byte budget) so that evaluating a run's N checkpoints decodes each image once.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from oodlab.utils.errors import InputError


def split_transform(preprocess: Any) -> tuple[Callable, tuple[float, ...] | None, tuple[float, ...] | None]:
    """Split an open_clip eval transform into its PIL part and the normalisation constants.

    Returns:
        (PIL -> PIL transform, mean, std); mean and std are None when the transform does not end
        with ``ToTensor`` + ``Normalize`` (the whole transform then runs in the workers).
    """
    steps = getattr(preprocess, "transforms", None)
    if steps and len(steps) >= 2 and type(steps[-1]).__name__ == "Normalize" and "ToTensor" in type(steps[-2]).__name__:
        from torchvision.transforms import Compose

        norm = steps[-1]
        return Compose(steps[:-2]), tuple(map(float, norm.mean)), tuple(map(float, norm.std))
    return preprocess, None, None


class _Decode(torch.utils.data.Dataset):
    """Image ``i`` -> (uint8 HxWx3 array or float tensor, error message or '')."""

    def __init__(self, paths: Sequence[Path], transform: Callable, as_uint8: bool):
        self.paths, self.transform, self.as_uint8 = list(paths), transform, as_uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(self.paths[i].read_bytes()))
                img.load()
            out = self.transform(img.convert("RGB"))
            return (np.asarray(out, dtype=np.uint8) if self.as_uint8 else out), ""
        except Exception as err:  # PIL raises many types for damaged files
            return None, f"{type(err).__name__}: {str(err)[:200]}"


def _collate(items: list[tuple[Any, str]]) -> dict[str, Any]:
    errors = [(i, e) for i, (_, e) in enumerate(items) if e]
    if errors:
        return {"errors": errors}
    images = [x for x, _ in items]
    if isinstance(images[0], np.ndarray):
        return {"images": torch.from_numpy(np.stack(images))}
    return {"images": torch.stack(images)}


class BatchSource:
    """Model-ready image batches of one dataset, decoded once and optionally cached.

    Args:
        paths: the images, in order.
        preprocess: the model's eval transform.
        batch_size: images per batch.
        workers: DataLoader processes (0: decode in this process).
        cache_bytes: keep the decoded uint8 batches when they take at most this many bytes.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Any, *, batch_size: int, workers: int, cache_bytes: int):
        self.paths = list(paths)
        self.transform, self.mean, self.std = split_transform(preprocess)
        self.batch_size, self.workers, self.cache_bytes = batch_size, workers, cache_bytes
        self._cache: list[torch.Tensor] | None = None

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held in memory."""
        return sum(x.numel() * x.element_size() for x in self._cache or [])

    def batches(self, device: Any, dtype: Any) -> Iterator[torch.Tensor]:
        """Yield float batches [b, 3, H, W] on ``device`` in ``dtype``, in image order.

        Raises:
            InputError: an image cannot be decoded (its path is named).
        """
        raw = iter(self._cache) if self._cache is not None else self._decode()
        for x in raw:
            yield self._normalise(x).to(device=device, dtype=dtype)

    def _decode(self) -> Iterator[torch.Tensor]:
        as_uint8 = self.mean is not None
        loader = torch.utils.data.DataLoader(
            _Decode(self.paths, self.transform, as_uint8),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_collate,
            prefetch_factor=4 if self.workers else None,
        )
        kept: list[torch.Tensor] | None = [] if as_uint8 else None
        size = 0
        for b, batch in enumerate(loader):
            if "errors" in batch:
                i, err = batch["errors"][0]
                raise InputError(self.paths[b * self.batch_size + i], f"cannot be decoded ({err})",
                                 "replace or remove the damaged image")
            x = batch["images"]
            if kept is not None:
                size += x.numel() * x.element_size()
                if size <= self.cache_bytes:
                    kept.append(x)
                else:
                    kept = None  # too large: decode again next time
            yield x
        if kept is not None:
            self._cache = kept

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x.permute(0, 3, 1, 2).float().div(255) - mean) / std
