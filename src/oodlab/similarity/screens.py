"""Screens: how the fast pass reduces rows before its GEMM, and the proven error of the result.

A screen turns the eval rows (once) and each tile of training rows into a low-precision form,
multiplies them, and bounds ``|computed score - exact score|`` by ``delta`` for the tile
(:mod:`oodlab.similarity.bounds`). The engine trusts nothing else: every decision within
``delta`` is re-checked in float64.

- ``bf16``: rows cast to bfloat16, one oneDNN GEMM with float32 accumulation: the fast path on
  CPUs with native bf16 (AVX512-BF16 / AMX; ~5x faster than fp32 on this repo's Xeon), but
  emulated and ~7x *slower* than fp32 on CPUs without it (AVX2-only x86, e.g. AMD Zen 3);
- ``fp32``: rows as stored, float32 BLAS GEMM. On CPU its tile is rounded to bf16 afterwards so
  that the same fused kernels read it (one extra rounding in the bound; the tile pass reads
  half the bytes).
- ``auto`` (the default): on CPU, time both GEMMs on a probe tile once per process and shape and
  use the faster (:func:`pick_screen`); on GPUs, bf16 (tensor cores).

Why time rather than read CPU flags: whether oneDNN has a native bf16 kernel depends on the
CPU, the torch build and ``ONEDNN_MAX_CPU_ISA``; the timing answers the question that matters.

Why not int8 (VNNI products run ~2x faster than bf16 here): quantising unit vectors to 8 bits
leaves errors of ~0.025 in the scores of 512-d rows, and as many as ~60 eval samples can lie
that close to a training row's maximum; re-scoring them costs more than the faster GEMM saves.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from oodlab.similarity.bounds import RowErrors, row_errors, score_bound

log = logging.getLogger(__name__)


def make_gemm(a_low: torch.Tensor, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x @ a_low.T``. On CPU with bf16, oneDNN's linear with the eval side packed once
    (instead of per call) runs ~7% faster here; it is used only if it reproduces the plain
    product bit for bit on a probe (the error bounds assume oneDNN's bf16 GEMM)."""

    def plain(x: torch.Tensor) -> torch.Tensor:
        return x @ a_low.T

    if a_low.device.type != "cpu":
        return plain
    if a_low.dtype == torch.float32:
        return _fp32_gemm(a_low)
    if a_low.dtype != torch.bfloat16:
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


def _fp32_gemm(a32: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """CPU float32 ``x -> x @ a32.T`` into a reused buffer, the eval side transposed once: BLAS
    runs ~20% faster here on a contiguous right operand, and a fresh 8192 x 2000 result would
    page-fault its 65 MB on every tile."""
    a_t = a32.T.contiguous()
    buffers: dict[int, torch.Tensor] = {}

    def gemm(x: torch.Tensor) -> torch.Tensor:
        out = buffers.get(len(x))
        if out is None:
            buffers.clear()  # only the last tile of a chunk is shorter: keep one buffer
            out = buffers[len(x)] = torch.empty(len(x), a_t.shape[1])
        return torch.mm(x, a_t, out=out)

    return gemm


@dataclass
class Encoded:
    """One tile of training rows in the screen's form: what the GEMM consumes and the bound."""

    low: Any
    errors: RowErrors
    delta: float


class FloatScreen:
    """Rows cast to a float dtype (bf16 or fp32); the tile comes out as ``tile_dtype`` (bf16 on
    CPU, where the fused kernels read bf16 bit patterns; the compute dtype elsewhere)."""

    def __init__(self, name: str, dtype: torch.dtype, a32: torch.Tensor, tile_rows: int):
        self.name, self.dtype, self.dim = name, dtype, a32.shape[1]
        self.tile_dtype = torch.bfloat16 if a32.device.type == "cpu" else dtype
        self.a_low = a32.to(dtype)
        self.a_err = row_errors(a32, self.a_low)
        self._gemm = make_gemm(self.a_low, tile_rows)

    def encode(self, b32: torch.Tensor) -> Encoded:
        low = b32.to(self.dtype)
        errors = row_errors(b32, low)
        then = self.tile_dtype if self.tile_dtype != self.dtype else None
        delta = score_bound(self.a_err, errors, self.dim, self.dtype, then=then)
        if b32.device.type == "cuda":
            delta *= 8  # tensor cores may align partial sums with truncation: be generous
        return Encoded(low, errors, delta)

    def gemm(self, enc: Encoded) -> torch.Tensor:
        return self._gemm(enc.low).to(self.tile_dtype)

    def bits(self, tile: torch.Tensor) -> np.ndarray:
        """A bf16 tile's bit patterns (int16), as the fused CPU kernels read them."""
        return tile.view(torch.int16).numpy()


#: precision name -> screen factory (eval rows float32, tile rows)
SCREENS = {
    "bf16": lambda a32, tile_rows: FloatScreen("bf16", torch.bfloat16, a32, tile_rows),
    "fp32": lambda a32, tile_rows: FloatScreen("fp32", torch.float32, a32, tile_rows),
}
#: what ``--screen`` accepts: a screen, or ``auto``
SCREEN_CHOICES = ("auto", *SCREENS)
#: (n_cols, dim, tile_rows, threads) -> the screen auto picked, so a process times a shape once
_PICKED: dict[tuple[int, int, int, int], str] = {}
_PROBE_ROWS = 512


def pick_screen(a32: torch.Tensor, tile_rows: int) -> FloatScreen:
    """The faster screen for eval rows ``a32`` (float32 [n_cols, d]) on this machine.

    On CPU each screen's encode + GEMM runs on a ``_PROBE_ROWS`` x d probe (one warm-up, best
    of two); the choice is remembered for the shape and thread count. GPUs take bf16.
    """
    if a32.device.type != "cpu":
        return SCREENS["bf16"](a32, tile_rows)
    key = (a32.shape[0], a32.shape[1], tile_rows, torch.get_num_threads())
    if key not in _PICKED:
        probe = torch.randn(_PROBE_ROWS, a32.shape[1], generator=torch.Generator().manual_seed(0))
        probe /= probe.norm(dim=1, keepdim=True)
        seconds = {}
        for name, make in SCREENS.items():
            screen = make(a32, tile_rows)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                screen.gemm(screen.encode(probe))
                times.append(time.perf_counter() - t0)
            seconds[name] = min(times[1:])
        _PICKED[key] = min(seconds, key=seconds.get)
        log.info("screen auto: %s (probe GEMM %s)", _PICKED[key],
                 ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in seconds.items()))
    return SCREENS[_PICKED[key]](a32, tile_rows)


def make_screen(name: str, a32: torch.Tensor, tile_rows: int) -> FloatScreen:
    """The screen called ``name`` (one of :data:`SCREEN_CHOICES`) for eval rows ``a32``."""
    if name == "auto":
        return pick_screen(a32, tile_rows)
    if name not in SCREENS:
        raise ValueError(f"screen must be one of {list(SCREEN_CHOICES)}, got {name!r}")
    return SCREENS[name](a32, tile_rows)
