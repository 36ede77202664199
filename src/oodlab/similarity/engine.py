"""The exact streaming similarity pass over a training set, for several eval sets at once.

For each chunk of training rows ``B`` it computes one score tile ``T = B @ A.T`` against all eval
rows ``A`` (bf16 inputs, float32 accumulation, bf16 result on the fast path) and updates:

- per eval sample: the k most similar training rows (exact scores, ties -> lower train index);
- per training row and eval set: the maximum similarity and the eval sample attaining it;
- per training row and eval set with thresholds ``t``: the margin ``max_i (s_ij - t_i)`` and the
  eval sample attaining it.

Exactness: every computed score is within a proven ``delta`` of the exact score
(:mod:`oodlab.similarity.bounds`). Only pairs within ``2 delta`` of a decision are kept as
candidates and re-scored in float64 from the stored rows, so the outputs equal a brute-force
computation on the stored embeddings.

Why this is written by hand: faiss and torch give top-k per query, but not the per-train maxima,
margins and top-k from one tile, and not an exactness guarantee for low-precision products. The
candidates are found with two levels of block maxima (64 x 64 groups) so that the full tile is
read only by cheap ``amax`` reductions; everything else touches a small fraction of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from oodlab.similarity.bounds import RowErrors, row_errors, score_bound
from oodlab.similarity.exact import pair_scores

#: block size of the two-level candidate search (rows and columns of the score tile)
GROUP = 64
#: cushion for float32 arithmetic on approximate scores (comparisons, subtraction of thresholds)
_FP32_CUSHION = 1e-6
#: compute dtypes of the tile by precision name
COMPUTE = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class EvalSet:
    """One eval set: its rows, keys and optional per-row thresholds (original order)."""

    name: str
    embeddings: np.ndarray  # float32 [q, d]
    keys: np.ndarray  # [q]
    thresholds: np.ndarray | None = None  # float64 [q]


@dataclass
class _Layout:
    """Where a set lives among the padded columns of the tile."""

    name: str
    col0: int  # first padded column
    q: int  # real rows
    groups: tuple[int, int]  # column-group range
    order: np.ndarray  # padded position -> original row index (real rows only)
    order_t: torch.Tensor  # the same, on the device
    t_sorted: torch.Tensor | None  # float64 [q] thresholds in tile order
    t_group_min: torch.Tensor | None  # float32 [n_groups]
    t_group_max: torch.Tensor | None


@dataclass
class ChunkResult:
    """Per-training-row results of one chunk, by eval set name (original eval row indices)."""

    max_sim: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [c]
    argmax: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [c]
    margin: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [c]
    margin_argmax: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [c]


class BadRowError(ValueError):
    """A training row is NaN/inf or not unit-norm (its index within the chunk is ``row``)."""

    def __init__(self, row: int, norm: float):
        self.row, self.norm = row, norm
        what = "has NaN/inf values" if not np.isfinite(norm) else f"has norm {norm:.4f}, not 1"
        super().__init__(f"row {row} {what}")


#: |norm - 1| allowed for an input row (float16 storage keeps unit rows within ~5e-4)
NORM_TOLERANCE = 5e-3


def _check_unit_rows(norms: torch.Tensor) -> None:
    bad = ~torch.isfinite(norms) | ((norms - 1).abs() > NORM_TOLERANCE + 1e-3)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise BadRowError(row, float(norms[row]))


class TopK:
    """The exact top-k training rows of every eval column, kept as dense arrays.

    ``rows`` int64 [n_cols, k] (-1 where fewer than k rows were seen) and ``scores`` float64
    [n_cols, k] (-inf there), each row sorted by score descending, ties by lower train index.
    """

    def __init__(self, n_cols: int, k: int):
        self.k = k
        self.rows = np.full((n_cols, k), -1, np.int64)
        self.scores = np.full((n_cols, k), -np.inf, np.float64)

    @property
    def kth(self) -> np.ndarray:
        """Exact k-th best score per column (-inf while fewer than k were seen)."""
        return self.scores[:, -1] if self.k else np.full(len(self.rows), np.inf)

    def merge(self, cols: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> None:
        """Merge new (column, train row, exact score) triples whose rows all come after the
        rows already held (so an equal score never displaces a held row)."""
        if not len(cols):
            return
        touched, pos = np.unique(cols, return_inverse=True)
        k = self.k
        all_pos = np.concatenate([np.repeat(np.arange(len(touched)), k), pos])
        all_rows = np.concatenate([self.rows[touched].ravel(), rows])
        all_scores = np.concatenate([self.scores[touched].ravel(), scores])
        order = np.lexsort((all_rows, -all_scores, all_pos))
        all_pos, all_rows, all_scores = all_pos[order], all_rows[order], all_scores[order]
        starts = np.searchsorted(all_pos, np.arange(len(touched)))
        take = (starts[:, None] + np.arange(k)).ravel()  # each touched column has >= k entries
        self.rows[touched] = all_rows[take].reshape(-1, k)
        self.scores[touched] = all_scores[take].reshape(-1, k)

    def state(self) -> dict[str, np.ndarray]:
        return {"rows": self.rows, "scores": self.scores}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.rows, self.scores = state["rows"].copy(), state["scores"].copy()


class StreamingNeighbors:
    """Accumulates the exact similarity outputs over a stream of training chunks.

    Args:
        evals: the eval sets (their embeddings stay resident on ``device``).
        k: neighbours per eval row (0: no top-k, only per-training-row outputs).
        per_train: compute per-training-row maxima and margins.
        precision: ``bf16`` (fast path, re-checked exactly) or ``fp32``.
        device: torch device for the tiles.
    """

    def __init__(self, evals: Sequence[EvalSet], k: int, *, per_train: bool = True, precision: str = "bf16",
                 device: str = "cpu"):
        if precision not in COMPUTE:
            raise ValueError(f"precision must be one of {sorted(COMPUTE)}")
        self.k, self.per_train, self.device = k, per_train, torch.device(device)
        self.cdtype = COMPUTE[precision]
        dims = {e.embeddings.shape[1] for e in evals}
        if len(dims) != 1:
            raise ValueError("eval sets differ in dimension")
        if any(len(e.embeddings) == 0 for e in evals):
            raise ValueError("an eval set is empty")
        self.dim = dims.pop()
        self.layouts: list[_Layout] = []
        blocks, col = [], 0
        for e in evals:
            q = len(e.embeddings)
            order = np.argsort(e.thresholds, kind="stable") if e.thresholds is not None else np.arange(q)
            q_pad = -(-q // GROUP) * GROUP
            block = np.zeros((q_pad, self.dim), np.float32)
            block[:q] = e.embeddings[order]
            blocks.append(block)
            t_sorted = tmin = tmax = None
            if e.thresholds is not None:
                ts = np.asarray(e.thresholds, np.float64)[order]
                padded = np.concatenate([ts, np.full(q_pad - q, ts[-1] if q else 0.0)]).reshape(-1, GROUP)
                t_sorted = torch.from_numpy(ts).to(self.device)
                tmin = torch.from_numpy(padded.min(1)).float().to(self.device)
                tmax = torch.from_numpy(padded.max(1)).float().to(self.device)
            self.layouts.append(
                _Layout(e.name, col, q, (col // GROUP, (col + q_pad) // GROUP), order,
                        torch.from_numpy(order).to(self.device), t_sorted, tmin, tmax)
            )
            col += q_pad
        self.n_cols = col
        a32 = np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)
        self.a32 = torch.from_numpy(a32).to(self.device)
        self.a_c = self.a32.to(self.cdtype)
        real = np.zeros(col, bool)
        for lay in self.layouts:
            real[lay.col0 : lay.col0 + lay.q] = True
        self.pad_cols = torch.from_numpy(np.flatnonzero(~real)).to(self.device)
        self.col_to_set = np.repeat(np.arange(len(self.layouts)), [(-(-lay.q // GROUP)) * GROUP for lay in self.layouts])
        self.a_err: RowErrors = row_errors(self.a32[torch.from_numpy(real).to(self.device)], self.a_c[torch.from_numpy(real).to(self.device)])
        self.topk = TopK(col, k)
        self._pad_cols_mask = ~real

    # -- one chunk --------------------------------------------------------------------------
    def process(self, chunk: np.ndarray, offset: int) -> ChunkResult:
        """Consume training rows ``chunk`` ([c, d], float16 or float32 as stored) whose first
        global row index is ``offset``; returns the chunk's per-training-row results."""
        c = len(chunk)
        result = ChunkResult()
        if chunk.ndim != 2 or (c and chunk.shape[1] != self.dim):
            raise ValueError(f"train rows have shape {chunk.shape}, eval rows have dim {self.dim}")
        if c == 0:
            for lay in self.layouts:
                result.max_sim[lay.name], result.argmax[lay.name] = np.zeros(0), np.zeros(0, np.int64)
                if lay.t_sorted is not None:
                    result.margin[lay.name], result.margin_argmax[lay.name] = np.zeros(0), np.zeros(0, np.int64)
            return result
        c_pad = -(-c // GROUP) * GROUP
        b = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device).float()
        b_c = torch.zeros((c_pad, self.dim), dtype=self.cdtype, device=self.device)
        b_c[:c] = b
        errors = row_errors(b, b_c[:c])
        _check_unit_rows(errors.norm)
        delta = score_bound(self.a_err, errors, self.dim, self.cdtype)
        if self.device.type == "cuda":
            delta *= 8  # tensor cores may align partial sums with truncation: be generous
        tile = b_c @ self.a_c.T  # [c_pad, n_cols]
        tile[c:] = float("-inf")
        if len(self.pad_cols):
            tile.index_fill_(1, self.pad_cols, float("-inf"))
        if self.per_train:
            col_groups = tile[:c].view(c, -1, GROUP).amax(2).float()  # [c, n_cols / G]
            for lay in self.layouts:
                result.max_sim[lay.name], result.argmax[lay.name] = self._row_max(tile, col_groups, b, lay, False, delta)
                if lay.t_sorted is not None:
                    result.margin[lay.name], result.margin_argmax[lay.name] = self._row_max(
                        tile, col_groups, b, lay, True, delta
                    )
        if self.k:
            self._topk_hits(tile, b, c, offset, delta)
        return result

    def _row_max(self, tile: torch.Tensor, col_groups: torch.Tensor, b: torch.Tensor, lay: _Layout,
                 with_t: bool, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact max over the set's columns of ``s_ji`` (or ``s_ji - t_i``) per train row j,
        and its original eval index (ties -> lowest)."""
        c = len(b)
        g0, g1 = lay.groups
        cg = col_groups[:, g0:g1]
        slack = 2 * delta + _FP32_CUSHION
        if with_t:
            upper = cg - lay.t_group_min  # >= max over the group of (T - t)
            lower = (cg - lay.t_group_max).amax(1)  # <= max over the row of (T - t)
        else:
            upper, lower = cg, cg.amax(1)
        jj, gg = torch.nonzero(upper >= (lower - slack)[:, None], as_tuple=True)
        cols = (g0 + gg)[:, None] * GROUP + torch.arange(GROUP, device=tile.device)  # [n, G] tile columns
        vals = tile[jj[:, None], cols].float()
        if with_t:
            vals = vals - lay.t_sorted[(cols - lay.col0).clamp(0, lay.q - 1)].float()
        approx_max = torch.full((c,), float("-inf"), device=tile.device).scatter_reduce(0, jj, vals.amax(1), "amax")
        keep = vals >= (approx_max[jj] - slack)[:, None]
        pj = jj[:, None].expand_as(cols)[keep]
        pcol = cols[keep]
        exact = pair_scores(b, self.a32, pj, pcol).to(tile.device)
        if with_t:
            exact = exact - lay.t_sorted[pcol - lay.col0]
        best = torch.full((c,), float("-inf"), dtype=torch.float64, device=tile.device).scatter_reduce(0, pj, exact, "amax")
        orig = lay.order_t[pcol - lay.col0]
        big = torch.iinfo(torch.int64).max
        cand = torch.where(exact == best[pj], orig, torch.full_like(orig, big))
        arg = torch.full((c,), big, dtype=torch.int64, device=tile.device).scatter_reduce(0, pj, cand, "amin")
        return best.cpu().numpy(), arg.cpu().numpy()

    def _topk_hits(self, tile: torch.Tensor, b: torch.Tensor, c: int, offset: int, delta: float) -> None:
        """Find the chunk's rows that may enter some column's top-k, score them exactly, merge."""
        kth = self.topk.kth
        theta = np.where(self._pad_cols_mask, np.inf, kth - delta - _FP32_CUSHION)
        warm = np.flatnonzero(np.isneginf(theta))
        if len(warm) and c >= self.k:
            # columns with fewer than k rows so far: this chunk's own k-th best bounds them
            approx_kth = torch.topk(tile[:c, torch.from_numpy(warm).to(tile.device)].float(), self.k, dim=0).values[-1]
            theta[warm] = approx_kth.cpu().numpy().astype(np.float64) - 2 * delta - _FP32_CUSHION
        theta_t = torch.from_numpy(theta).float().to(tile.device)
        row_groups = tile.view(-1, GROUP, self.n_cols).amax(1).float()  # [c_pad / G, n_cols]
        rg, ii = torch.nonzero(row_groups >= theta_t, as_tuple=True)
        rows = rg[:, None] * GROUP + torch.arange(GROUP, device=tile.device)  # [n, G]
        vals = tile[rows, ii[:, None]].float()
        keep = (vals >= theta_t[ii][:, None]) & (rows < c)  # pad rows are -inf, which passes -inf
        hit_rows = rows[keep]
        hit_cols = ii[:, None].expand_as(rows)[keep]
        exact = pair_scores(b, self.a32, hit_rows, hit_cols).cpu().numpy()
        cols_np, rows_np = hit_cols.cpu().numpy(), hit_rows.cpu().numpy() + offset
        better = exact > kth[cols_np]  # strict: an equal score from a later row loses the tie
        self.topk.merge(cols_np[better], rows_np[better], exact[better])

    # -- results ----------------------------------------------------------------------------
    def topk_result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Exact top-k per eval set: {name: (train_index int64 [q, k], score float64 [q, k])},
        rows in original eval order, ties -> lower train index; -1 / -inf where fewer than k
        training rows exist."""
        out = {}
        for lay in self.layouts:
            idx = np.empty((lay.q, self.k), np.int64)
            sc = np.empty((lay.q, self.k), np.float64)
            idx[lay.order] = self.topk.rows[lay.col0 : lay.col0 + lay.q]
            sc[lay.order] = self.topk.scores[lay.col0 : lay.col0 + lay.q]
            out[lay.name] = (idx, sc)
        return out
