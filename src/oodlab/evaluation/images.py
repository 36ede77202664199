"""Decoding evaluation images into model-ready batches, with an optional in-memory cache.

DataLoader workers run the PIL steps of the model's eval transform (resize, crop, RGB) and ship
uint8 arrays; the main process turns a whole batch into normalised floats, exactly as the
transform's ``ToTensor`` + ``Normalize`` would. Decoded uint8 batches of a dataset may be kept
(up to a byte budget) so that evaluating a run's N checkpoints decodes each image once.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.utils.data

from oodlab.models.preprocess import SplitPreprocess
from oodlab.utils.errors import InputError


class _Decode(torch.utils.data.Dataset):
    """Image ``i`` -> (its worker-half preprocessed form, error message or '')."""

    def __init__(self, paths: Sequence[Path], prep: SplitPreprocess):
        self.paths, self.prep = list(paths), prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        try:
            return self.prep.image(self.paths[i].read_bytes()), ""
        except Exception as err:  # PIL raises many types for damaged files
            return None, f"{type(err).__name__}: {str(err)[:200]}"


def _collate(prep: SplitPreprocess, items: list[tuple[Any, str]]) -> dict[str, Any]:
    errors = [(i, e) for i, (_, e) in enumerate(items) if e]
    if errors:
        return {"errors": errors}
    return {"images": prep.stack([x for x, _ in items])}


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
        self.prep = SplitPreprocess(preprocess)
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
            yield self.prep.normalise(x).to(device=device, dtype=dtype)

    def _decode(self) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _Decode(self.paths, self.prep),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=functools.partial(_collate, self.prep),
            prefetch_factor=4 if self.workers else None,
        )
        kept: list[torch.Tensor] | None = [] if self.prep.split else None
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
