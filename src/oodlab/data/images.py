"""Decoding stored image bytes, the one way every stage does it."""

from __future__ import annotations

import io
import warnings
from typing import Any


def decode_image(data: bytes) -> Any:
    """The RGB PIL image of encoded bytes (JPEG, PNG, WebP, ...), fully loaded.

    Raises:
        PIL.UnidentifiedImageError, OSError, ValueError: damaged bytes (callers list the sample);
        PIL.Image.DecompressionBombWarning as an error: an image too large to be a training image.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        img.load()
    return img.convert("RGB")
