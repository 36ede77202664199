"""Rigorous error bounds of low-precision similarity tiles.

The fast path computes scores ``T = bf16(B) @ bf16(A).T`` with float32 accumulation and a
bfloat16 result. For rows ``a`` (eval) and ``b`` (train) as stored (exactly representable in
float32), the computed value ``t`` differs from the exact ``s = a . b`` by at most

    |t - s| <= e_a ||b^|| + ||a|| e_b                (rounding the inputs to bf16)
             + gamma_d ||a^|| ||b^||                 (float32 accumulation of d products)
             + ulp_out / 2                           (rounding the result to bf16)

with ``e_x = ||x - bf16(x)||`` measured per row, ``gamma_d = d u / (1 - d u)``, ``u = 2^-24``
(Cauchy-Schwarz bounds ``sum |a_i b_i|`` by the norms), and ``ulp_out / 2 = 2^-9`` for results
below 1 in magnitude (``2^-8`` below 2). A chunk's bound ``delta`` takes the maxima over its rows.
Any decision (a k-th best score, a maximum, the sign of a margin) that is more than ``delta`` away
from a computed value is therefore certain; everything closer is re-checked exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

U32 = 2.0**-24


@dataclass(frozen=True)
class RowErrors:
    """Per-row facts of one side of the product: norms of the stored and rounded rows and the
    norm of the rounding residual (upper bounds, float64 [n])."""

    norm: torch.Tensor
    norm_rounded: torch.Tensor
    residual: torch.Tensor

    def rows(self, start: int, stop: int) -> "RowErrors":
        return RowErrors(self.norm[start:stop], self.norm_rounded[start:stop], self.residual[start:stop])

    def max(self) -> tuple[float, float, float]:
        if len(self.norm) == 0:
            return 0.0, 0.0, 0.0
        return float(self.norm.max()), float(self.norm_rounded.max()), float(self.residual.max())


def row_errors(x: torch.Tensor, rounded: torch.Tensor) -> RowErrors:
    """Norms and rounding residuals of rows ``x`` (float32 [n, d]) and ``rounded`` (the same
    rows in the compute dtype), as upper bounds.

    ``x - rounded`` is exact in float32 (both are within a factor 2 of each other), and a float32
    norm is within ``d * 2^-24`` (relative) of the true one: the results are inflated by 1e-4
    to remain upper bounds for any d below ~1600 (a bigger d gets a proportionally bigger cushion).
    """
    cushion = 1 + max(1e-4, 2 * x.shape[1] * U32)
    r32 = rounded.float()
    return RowErrors(x.norm(dim=1).double() * cushion, r32.norm(dim=1).double() * cushion,
                     (x - r32).norm(dim=1).double() * cushion)


def _rounding(max_value: float, dtype: torch.dtype) -> float:
    """Half an ulp of ``dtype`` at magnitudes up to ``max_value``: the error of one rounding."""
    if dtype == torch.bfloat16:
        return 2.0**-9 if max_value < 1 else 2.0**-8 if max_value < 2 else max_value * 2.0**-8
    if dtype == torch.float16:
        return 2.0**-11 if max_value < 1 else 2.0**-10 if max_value < 2 else max_value * 2.0**-10
    if dtype == torch.float32:
        return max_value * U32
    raise ValueError(f"no rounding bound for {dtype}")


def score_bound(eval_side: RowErrors, train_side: RowErrors, dim: int, out_dtype: torch.dtype,
                then: torch.dtype | None = None) -> float:
    """The bound ``delta`` of module docstring for all pairs of the given rows; ``then``: the
    result is rounded a second time to this dtype (a float32 GEMM whose tile is stored as bf16)."""
    a_norm, a_round, e_a = eval_side.max()
    b_norm, b_round, e_b = train_side.max()
    gamma = dim * U32 / (1 - dim * U32)
    bound = e_a * b_round + a_norm * e_b + gamma * a_round * b_round
    max_value = a_round * b_round * (1 + gamma) + bound
    bound += _rounding(max_value, out_dtype)
    if then is not None:
        bound += _rounding(max_value + bound, then)
    # float64 roundoff of the bound itself is irrelevant at this size; a relative cushion
    # covers the float64 arithmetic of the terms above
    return bound * (1 + 1e-9) + 1e-12
