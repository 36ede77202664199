"""The exact streaming similarity pass over a training set, for several eval sets at once.

For each tile of training rows ``B`` it computes the scores ``T = B @ A.T`` against all eval rows
``A`` (bf16 inputs, float32 accumulation, bf16 result on the fast path) and updates:

- per eval sample: the k most similar training rows (exact scores, ties -> lower train index);
- per training row and eval set: the maximum similarity and the eval sample attaining it;
- per training row and eval set with thresholds ``t``: the margin ``max_i (s_ij - t_i)`` and the
  eval sample attaining it.

Exactness: every computed score is within a proven ``delta`` of the exact score
(:mod:`oodlab.similarity.bounds`). Only pairs within ``2 delta`` of a decision are kept as
candidates and re-scored in float64 from the stored rows, so the outputs equal a brute-force
computation on the stored embeddings. Top-k candidates are only those within ``delta`` of the
column's exact k-th best so far.

Why this is written by hand: faiss and torch give top-k per query, but not the per-train maxima,
margins and top-k from one tile, and not an exactness guarantee for low-precision products.
Two interchangeable tile backends (a small registry) find the candidates: ``numba`` fuses all
per-row work into one read of each tile row (the CPU default), ``torch`` uses block maxima and
gathers and runs on any torch device (the CUDA default). Tests check both against brute force.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from oodlab.embeddings.store import NORM_TOLERANCE, EmbeddingStore
from oodlab.utils.errors import InputError
from oodlab.utils.progress import progress
from oodlab.similarity.exact import pair_scores
from oodlab.similarity.screens import Encoded, make_screen

#: rows per group of the torch backend's candidate search (maxima over GROUP training rows per
#: eval column; only groups that can hold a candidate are read again)
GROUP = 16
#: scores per tile: 8M bf16 values (16 MB) stay in the last-level cache, where the GEMM and the
#: reductions that read it run ~25% faster than on tiles spilling to memory
TILE_ELEMENTS = 8 * 1024 * 1024
#: cushion for float32 arithmetic on approximate scores (comparisons, subtraction of thresholds)
_FP32_CUSHION = 1e-6


@dataclass
class EvalSet:
    """One eval set: its rows, keys and optional per-row thresholds (original order)."""

    name: str
    embeddings: np.ndarray  # float32 [q, d]
    keys: np.ndarray  # [q]
    thresholds: np.ndarray | None = None  # float64 [q]


@dataclass
class _Layout:
    """Where a set lives among the tile's columns: ``q`` columns from ``col0``."""

    name: str
    col0: int
    q: int
    t: torch.Tensor | None  # float64 [q] thresholds (on the device)

    @property
    def cols(self) -> slice:
        return slice(self.col0, self.col0 + self.q)


@dataclass
class ChunkResult:
    """Per-training-row results of one chunk, by eval set name (eval indices within the set)."""

    max_sim: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [c]
    argmax: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [c]
    margin: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [c]
    margin_argmax: dict[str, np.ndarray] = field(default_factory=dict)  # int64 [c]


#: one tile's per-set rows: name -> (max, argmax[, margin, margin argmax]); and its top-k hits
#: as (column, global train row, exact score)
_TileOut = tuple[dict[str, tuple[np.ndarray, ...]], tuple[np.ndarray, np.ndarray, np.ndarray]]


class BadRowError(ValueError):
    """A training row is NaN/inf or not unit-norm (its index within the chunk is ``row``)."""

    def __init__(self, row: int, norm: float):
        self.row, self.norm = row, norm
        what = "has NaN/inf values" if not np.isfinite(norm) else f"has norm {norm:.4f}, not 1"
        super().__init__(f"row {row} {what}")


def _first_bad_row(norms: torch.Tensor) -> int | None:
    """Index of the first NaN/inf or non-unit row (norms are upper bounds: allow their cushion)."""
    bad = ~torch.isfinite(norms) | ((norms - 1).abs() > NORM_TOLERANCE + 1e-3)
    return int(torch.nonzero(bad)[0, 0]) if bool(bad.any()) else None


def _padded(tile: torch.Tensor) -> torch.Tensor:
    """The tile with -inf rows appended up to a multiple of GROUP rows (for group views)."""
    pad = -len(tile) % GROUP
    if not pad:
        return tile
    return torch.cat([tile, tile.new_full((pad, tile.shape[1]), float("-inf"))])


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
        """Exact k-th best score per column (-inf while fewer than k were seen; +inf for k=0)."""
        return self.scores[:, -1] if self.k else np.full(len(self.rows), np.inf)

    def merge(self, cols: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> None:
        """Merge new (column, train row, exact score) triples whose rows all come after the
        rows already held (so an equal score never displaces a held row)."""
        from oodlab.similarity.kernels import merge_topk

        if not len(cols) or not self.k:
            return
        order = np.lexsort((rows, -scores, cols))
        cols, rows, scores = cols[order], rows[order], scores[order]
        touched = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
        starts = np.r_[touched, len(cols)].astype(np.int64)
        merge_topk(self.rows, self.scores, cols[touched], starts, rows, scores)

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
        screen: the candidate screen (:mod:`oodlab.similarity.screens`): ``auto`` (the faster on
            this machine), ``bf16`` or ``fp32``; results are exact with any.
        device: torch device for the tiles.
        backend: ``numba`` (CPU, bf16) or ``torch``; default: numba where it applies.
    """

    def __init__(self, evals: Sequence[EvalSet], k: int, *, per_train: bool = True, screen: str = "auto",
                 device: str = "cpu", backend: str | None = None):
        self.k, self.per_train, self.device = k, per_train, torch.device(device)
        dims = {e.embeddings.shape[1] for e in evals}
        if len(dims) != 1:
            raise ValueError("eval sets differ in dimension")
        if any(len(e.embeddings) == 0 for e in evals):
            raise ValueError("an eval set is empty")
        self.dim = dims.pop()
        self.layouts: list[_Layout] = []
        col = 0
        for e in evals:
            t = None if e.thresholds is None else torch.from_numpy(np.array(e.thresholds, np.float64)).to(self.device)
            self.layouts.append(_Layout(e.name, col, len(e.embeddings), t))
            col += len(e.embeddings)
        self.n_cols = col
        self.a32 = torch.from_numpy(np.concatenate([np.asarray(e.embeddings, np.float32) for e in evals])).to(self.device)
        self.topk = TopK(col, k)
        self.tile_rows = int(np.clip(TILE_ELEMENTS // max(col, 1) // GROUP * GROUP, GROUP, 8192))
        self.screen = make_screen(screen, self.a32, self.tile_rows)
        fused_ok = self.device.type == "cpu" and self.screen.tile_dtype == torch.bfloat16
        backend = backend or ("numba" if fused_ok else "torch")
        if backend not in TILE_BACKENDS or (backend == "numba" and not fused_ok):
            raise ValueError(f"backend {backend!r} needs a CPU (bf16 tiles); use 'torch'")
        self.backend = backend
        # the numba backend's view of the sets: column bounds and thresholds (0 where none)
        self._bounds = np.array([lay.col0 for lay in self.layouts] + [col], np.int64)
        self._has_t = np.array([lay.t is not None for lay in self.layouts])
        self._t_all = np.concatenate([
            lay.t.cpu().numpy() if lay.t is not None else np.zeros(lay.q) for lay in self.layouts
        ])
        self._t32 = self._t_all.astype(np.float32)

    # -- one chunk --------------------------------------------------------------------------
    def process(self, chunk: np.ndarray, offset: int) -> ChunkResult:
        """Consume training rows ``chunk`` ([c, d], float16 or float32 as stored) whose first
        global row index is ``offset``; returns the chunk's per-training-row results.

        The chunk is cut into tiles of about ``TILE_ELEMENTS`` scores.

        Raises:
            BadRowError: a row is NaN/inf or not unit-norm.
        """
        c = len(chunk)
        if chunk.ndim != 2 or (c and chunk.shape[1] != self.dim):
            raise ValueError(f"train rows have shape {chunk.shape}, eval rows have dim {self.dim}")
        b_all = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device).float()
        bad = _first_bad_row(b_all.double().norm(dim=1) if c else torch.zeros(0))
        if bad is not None:
            raise BadRowError(bad, float(b_all[bad].double().norm()))
        outs = []
        for s in range(0, c, self.tile_rows):
            per_set, hits = self._tile(b_all[s : s + self.tile_rows], offset + s)
            self.topk.merge(*hits)  # before the next tile: its thresholds use the new k-th bests
            outs.append(per_set)
        result = ChunkResult()
        for lay in self.layouts if self.per_train else []:
            fields = [(result.max_sim, result.argmax)]
            if lay.t is not None:
                fields.append((result.margin, result.margin_argmax))
            for at, (values, args) in enumerate(fields):
                values[lay.name] = np.concatenate([o[lay.name][2 * at] for o in outs]) if outs else np.zeros(0)
                args[lay.name] = np.concatenate([o[lay.name][2 * at + 1] for o in outs]) if outs else np.zeros(0, np.int64)
        return result

    def _tile(self, b: torch.Tensor, offset: int) -> _TileOut:
        """Screen one tile of training rows (float32 [c, d]) and hand it to the backend."""
        enc = self.screen.encode(b)
        tile = self.screen.gemm(enc)  # [c, n_cols]
        theta = self._theta(tile, enc)
        return TILE_BACKENDS[self.backend](self, tile, enc, b, offset, theta)

    def _theta(self, tile: torch.Tensor, enc: Encoded) -> np.ndarray:
        """Per column: computed scores below this can never enter the top-k (float64 [n_cols]).

        A row whose computed score is below ``kth - delta`` has an exact score below the exact
        k-th best held. Columns holding fewer than k rows are bounded by the tile's own k-th
        best instead: the k-th largest maximum over row groups minus ``2 delta`` (k groups hold
        a larger exact score than any row below it).
        """
        delta = enc.delta
        theta = self.topk.kth - delta - _FP32_CUSHION
        warm = np.flatnonzero(np.isneginf(theta))
        if len(warm) and len(tile) >= self.k:
            warm_t = torch.from_numpy(warm).to(tile.device)
            groups = _padded(tile).view(-1, GROUP, self.n_cols).amax(1)
            source = groups if len(groups) >= self.k else tile
            kth = torch.topk(source[:, warm_t].float(), self.k, dim=0).values[-1]
            theta[warm] = kth.cpu().numpy().astype(np.float64) - 2 * delta - _FP32_CUSHION
        return theta

    # -- backends ---------------------------------------------------------------------------
    def _tile_numba(self, tile: torch.Tensor, enc: Encoded, b: torch.Tensor, offset: int, theta: np.ndarray) -> _TileOut:
        from oodlab.similarity.kernels import ceil_keys, run_tile

        bounds = self._bounds if self.per_train else self._bounds[:1]
        (mx, arg, mg, marg), (cols, rows, scores) = run_tile(
            self.screen.bits(tile), len(b), b.numpy(), self.a32.numpy(), bounds, self._has_t, self._t_all, self._t32,
            2 * enc.delta + _FP32_CUSHION, ceil_keys(theta), self.topk.kth)
        per_set = {}
        for s, lay in enumerate(self.layouts if self.per_train else []):
            per_set[lay.name] = (mx[s], arg[s]) + ((mg[s], marg[s]) if lay.t is not None else ())
        return per_set, (cols, rows + offset, scores)

    def _tile_torch(self, tile: torch.Tensor, enc: Encoded, b: torch.Tensor, offset: int, theta: np.ndarray) -> _TileOut:
        tile = _padded(tile)
        row_groups = tile.view(-1, GROUP, self.n_cols).amax(1).float()  # [c_pad / G, n_cols]
        per_set = {}
        for lay in self.layouts if self.per_train else []:
            per_set[lay.name] = self._row_max_torch(tile, row_groups, b, lay, False, enc.delta)
            if lay.t is not None:
                per_set[lay.name] += self._row_max_torch(tile, row_groups, b, lay, True, enc.delta)
        return per_set, self._topk_hits_torch(tile, row_groups, b, offset, theta)

    def _row_max_torch(self, tile: torch.Tensor, row_groups: torch.Tensor, b: torch.Tensor, lay: _Layout,
                       with_t: bool, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Exact max over the set's columns of ``s_ji`` (or ``s_ji - t_i``) per train row j, and
        the eval index attaining it (ties -> lowest).

        One pass gives each row's approximate maximum ``m_j``. A column can hold a candidate
        (within ``2 delta`` of ``m_j``) for some row of a group only if the group's maximum in
        that column reaches the smallest ``m_j - 2 delta`` of the group; only those GROUP-value
        column slices are read again.
        """
        c = len(b)
        slack = 2 * delta + _FP32_CUSHION
        block = tile[:c, lay.cols]
        if with_t:
            t32 = lay.t.float()
            approx = (block.float() - t32).amax(1)
            group_vals = row_groups[:, lay.cols] - t32
        else:
            approx = block.amax(1).float()
            group_vals = row_groups[:, lay.cols]
        n_groups = len(row_groups)
        floor = torch.full((n_groups * GROUP,), float("inf"), device=tile.device)  # padding rows never pass
        floor[:c] = approx - slack
        floor = floor.view(n_groups, GROUP)
        gr, gi = torch.nonzero(group_vals >= floor.amin(1)[:, None], as_tuple=True)
        vals = tile.view(n_groups, GROUP, -1)[gr, :, lay.col0 + gi].float()  # [n, G]
        if with_t:
            vals = vals - t32[gi][:, None]
        ci, r = torch.nonzero(vals >= floor[gr], as_tuple=True)
        pj, pcol = gr[ci] * GROUP + r, lay.col0 + gi[ci]
        exact = pair_scores(b, self.a32, pj, pcol).to(tile.device)
        pi = pcol - lay.col0
        if with_t:
            exact = exact - lay.t[pi]
        best = torch.full((c,), float("-inf"), dtype=torch.float64, device=tile.device).scatter_reduce(0, pj, exact, "amax")
        big = torch.iinfo(torch.int64).max
        cand = torch.where(exact == best[pj], pi, torch.full_like(pi, big))
        arg = torch.full((c,), big, dtype=torch.int64, device=tile.device).scatter_reduce(0, pj, cand, "amin")
        return best.cpu().numpy(), arg.cpu().numpy()

    def _topk_hits_torch(self, tile: torch.Tensor, row_groups: torch.Tensor, b: torch.Tensor, offset: int,
                         theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tile's (column, global row, exact score) triples that beat a column's k-th best."""
        if not self.k:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        c = len(b)
        theta_t = torch.from_numpy(theta).float().to(tile.device)
        rg, ii = torch.nonzero(row_groups >= theta_t, as_tuple=True)
        vals = tile.view(len(row_groups), GROUP, -1)[rg, :, ii].float()  # [n, G]
        ci, r = torch.nonzero(vals >= theta_t[ii][:, None], as_tuple=True)
        hit_rows, hit_cols = rg[ci] * GROUP + r, ii[ci]
        ok = hit_rows < c  # padding rows are -inf, which passes a -inf threshold
        hit_rows, hit_cols = hit_rows[ok], hit_cols[ok]
        exact = pair_scores(b, self.a32, hit_rows, hit_cols).cpu().numpy()
        cols_np, rows_np = hit_cols.cpu().numpy(), hit_rows.cpu().numpy() + offset
        better = exact > self.topk.kth[cols_np]  # strict: an equal score from a later row loses the tie
        return cols_np[better], rows_np[better], exact[better]

    # -- results ----------------------------------------------------------------------------
    def topk_result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Exact top-k per eval set: {name: (train_index int64 [q, k], score float64 [q, k])},
        rows in eval order, ties -> lower train index; -1 / -inf where fewer than k training
        rows exist."""
        return {lay.name: (self.topk.rows[lay.cols].copy(), self.topk.scores[lay.cols].copy()) for lay in self.layouts}


#: tile backends by name (see the module docstring)
TILE_BACKENDS: dict[str, Callable[..., _TileOut]] = {
    "numba": StreamingNeighbors._tile_numba,
    "torch": StreamingNeighbors._tile_torch,
}


def stream_store(
    engine: StreamingNeighbors, store: EmbeddingStore, chunk_rows: int, *, parts: Sequence[int] | None = None,
    on_part_done: Callable[[int, list[ChunkResult]], None] | None = None, description: str = "neighbors",
) -> None:
    """Feed a training store's parts (all, or ``parts``) through ``engine``, ``chunk_rows`` rows at a time.

    ``on_part_done(part_index, results)`` is called after each part with its chunks' results.

    Raises:
        InputError: a row is NaN/inf or not unit-norm (naming its part file and row).
    """
    todo = list(range(len(store.parts))) if parts is None else list(parts)
    offsets = store.part_offsets()
    with progress(description, total=sum(store.parts[p].rows for p in todo), unit="train rows") as advance:
        for pi in todo:
            results = []
            # check=False: the engine checks every row itself, on the rows it already converts
            for chunk in store.iter_chunks(chunk_rows, keys=False, dtype=None, parts=[pi], check=False):
                try:
                    results.append(engine.process(chunk.embeddings, int(offsets[pi]) + chunk.start))
                except BadRowError as err:
                    raise InputError(
                        store.parts[pi].img_path,
                        f"train row {chunk.start + err.row} {str(err).split(' ', 2)[2]}",
                        "re-embed it; `oodlab store validate` lists all bad rows",
                    ) from err
                advance(len(chunk))
            if on_part_done is not None:
                on_part_done(pi, results)
