"""Screens: how the fast pass reduces rows before its GEMM, and the proven error of the result.

A screen turns the eval rows (once) and each tile of training rows into a low-precision form,
multiplies them, and bounds ``|computed score - exact score|`` by ``delta`` for the tile
(:mod:`oodlab.similarity.bounds`). The engine trusts nothing else: every decision within
``delta`` is re-checked in float64.

- ``bf16``: rows cast to bfloat16, one oneDNN GEMM with float32 accumulation (the fast path);
- ``fp32``: rows as stored, float32 GEMM (a reference; ~2.2x slower here).

Why not int8 (VNNI products run ~2x faster than bf16 here): quantising unit vectors to 8 bits
leaves errors of ~0.025 in the scores of 512-d rows, and as many as ~60 eval samples can lie
that close to a training row's maximum; re-scoring them costs more than the faster GEMM saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from oodlab.similarity.bounds import RowErrors, row_errors, score_bound


def make_gemm(a_low: torch.Tensor, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x @ a_low.T``. On CPU with bf16, oneDNN's linear with the eval side packed once
    (instead of per call) runs ~7% faster here; it is used only if it reproduces the plain
    product bit for bit on a probe (the error bounds assume oneDNN's bf16 GEMM)."""

    def plain(x: torch.Tensor) -> torch.Tensor:
        return x @ a_low.T

    if a_low.device.type != "cpu" or a_low.dtype != torch.bfloat16:
        return plain
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(a_low, rows)

        def prepacked(x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

        probe = torch.randn(min(rows, 64), a_low.shape[1], generator=torch.Generator().manual_seed(0)).to(a_low.dtype)
        if torch.equal(prepacked(probe), plain(probe)):
            return prepacked
    except (AttributeError, RuntimeError, NotImplementedError):
        pass  # a torch without these oneDNN ops
    return plain


@dataclass
class Encoded:
    """One tile of training rows in the screen's form: what the GEMM consumes and the bound."""

    low: Any
    errors: RowErrors
    delta: float


class FloatScreen:
    """Rows cast to a float dtype (bf16 fast path, or fp32)."""

    def __init__(self, name: str, dtype: torch.dtype, a32: torch.Tensor, tile_rows: int):
        self.name, self.dtype, self.dim = name, dtype, a32.shape[1]
        self.a_low = a32.to(dtype)
        self.a_err = row_errors(a32, self.a_low)
        self._gemm = make_gemm(self.a_low, tile_rows)

    def encode(self, b32: torch.Tensor) -> Encoded:
        low = b32.to(self.dtype)
        errors = row_errors(b32, low)
        delta = score_bound(self.a_err, errors, self.dim, self.dtype)
        if b32.device.type == "cuda":
            delta *= 8  # tensor cores may align partial sums with truncation: be generous
        return Encoded(low, errors, delta)

    def gemm(self, enc: Encoded) -> torch.Tensor:
        return self._gemm(enc.low)

    def bits(self, tile: torch.Tensor) -> np.ndarray:
        """A bf16 tile's bit patterns (int16), as the fused CPU kernels read them."""
        return tile.view(torch.int16).numpy()


#: precision name -> screen factory (eval rows float32, tile rows)
SCREENS = {
    "bf16": lambda a32, tile_rows: FloatScreen("bf16", torch.bfloat16, a32, tile_rows),
    "fp32": lambda a32, tile_rows: FloatScreen("fp32", torch.float32, a32, tile_rows),
}
