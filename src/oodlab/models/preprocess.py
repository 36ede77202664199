"""A model's eval transform, split so that decoding workers ship small uint8 images.

open_clip's eval transform is ``Resize -> CenterCrop -> RGB -> ToTensor -> Normalize``. Workers run
everything up to ``ToTensor`` on PIL images and ship uint8 ``H x W x 3`` arrays (4x less data than
float32); the main process turns a whole batch into normalised floats at once, exactly as
``ToTensor`` + ``Normalize`` would. A transform of another shape runs whole in the workers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from oodlab.data.images import decode_image


class SplitPreprocess:
    """The two halves of ``preprocess`` (see the module docstring).

    Attributes:
        pil: PIL image -> PIL image (the steps before ``ToTensor``), or the whole transform.
        mean, std: the ``Normalize`` constants, or None when the transform was not split.
    """

    def __init__(self, preprocess: Any):
        steps = getattr(preprocess, "transforms", None)
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self.pil: Callable = preprocess
        if steps and len(steps) >= 2 and type(steps[-1]).__name__ == "Normalize" and "ToTensor" in type(steps[-2]).__name__:
            from torchvision.transforms import Compose

            self.pil = Compose(steps[:-2])
            self.mean, self.std = tuple(map(float, steps[-1].mean)), tuple(map(float, steps[-1].std))

    @property
    def split(self) -> bool:
        return self.mean is not None

    def image(self, data: bytes) -> Any:
        """Worker half: encoded bytes -> uint8 array [H, W, 3] (split) or the transform's tensor."""
        out = self.pil(decode_image(data))
        return np.asarray(out, dtype=np.uint8) if self.split else out

    def stack(self, images: Sequence[Any]) -> torch.Tensor:
        """A batch of :meth:`image` outputs as one tensor (uint8 [b, H, W, 3] or float [b, 3, H, W])."""
        return torch.from_numpy(np.stack(images)) if self.split else torch.stack(list(images))

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """Main-process half: a :meth:`stack` batch -> float32 [b, 3, H, W], normalised."""
        if not self.split:
            return batch
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (batch.permute(0, 3, 1, 2).float().div(255) - mean) / std
