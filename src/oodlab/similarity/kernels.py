"""Fused CPU kernels of the exact neighbours pass (numba).

Why hand-written: after the low-precision GEMM, torch needs a dozen separate passes and index
tensors to find each training row's maximum, its near-ties and the top-k candidates; they cost
~40% on top of the GEMM here. These kernels read each tile row once (a row stays in L1/L2) and
do all of that row's work there, including the exact float64 re-scoring of its few candidates.

Scores are compared as *keys*: a bf16 tile arrives as its int16 bit patterns ``v``, and
``v ^ ((v >> 15) & 0x7fff)`` is an int16 whose order is the float order. Integer maxima and
comparisons vectorise 32 lanes wide (~0.05 ns per score, against ~0.3 ns for float32
reductions); only a row's maximum is turned back into a float. A float threshold ``x`` becomes
the key of the smallest bf16 value ``>= x``, so ``value >= x`` is exactly ``key >= ceil_key(x)``.

Ties: lowest eval index for maxima; the top-k merge keeps (score desc, train row asc).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: training rows handled by one parallel task (scratch buffers are allocated per task)
_ROWS_PER_TASK = 16
#: columns per block: blocks whose maximum cannot hold a candidate are not scanned again
_BLOCK = 64
#: top-k hits recorded per row in the fused pass; rows with more are redone by topk_hits
_HIT_SLOTS = 8
_F = {"reassoc", "contract"}


def ceil_keys(x: np.ndarray) -> np.ndarray:
    """Keys (int16) of the smallest bf16 values >= each threshold in ``x`` (+-inf map to +-inf)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.int32)
    b16 = (bits >> 16).astype(np.int32)
    up = (bits > 0) & ((bits & 0xFFFF) != 0) & (b16 != 0x7F80)  # positive, not exact: round up
    v = (b16 + up).astype(np.int16)
    return v ^ ((v >> 15) & np.int16(0x7FFF))


@njit(inline="always")
def _key(v):  # pragma: no cover - compiled
    return np.int16(v ^ ((v >> 15) & np.int16(0x7FFF)))  # numba widens the shift: narrow it back


@njit(inline="always")
def _key_value(k, ibuf1, fbuf1):  # pragma: no cover - compiled
    """The float value of a key (the key map is its own inverse)."""
    ibuf1[0] = np.int32(_key(k)) << 16
    return np.float64(fbuf1[0])


@njit(inline="always")
def _ceil_key(x, ibuf1, fbuf1):  # pragma: no cover - compiled
    """The key of the smallest bf16 value >= x."""
    fbuf1[0] = x
    bits = ibuf1[0]
    b16 = bits >> 16
    if bits > 0 and (bits & 0xFFFF) != 0 and b16 != 0x7F80:
        b16 += 1
    return _key(np.int16(b16))


@njit(inline="always")
def _dot(b, a):  # pragma: no cover - compiled
    s = 0.0
    for k in range(b.shape[0]):
        s += np.float64(b[k]) * np.float64(a[k])
    return s


@njit(inline="always")
def _block_keys(row, keys, theta_keys, b0, b1):  # pragma: no cover - compiled
    """Keys of ``row[b0:b1]`` into ``keys[b0:b1]``; returns (max key, number >= theta).

    Slices (not ``row[b0 + r]``) let numba prove the indices non-negative, so the loop
    vectorises; with offsets it falls back to scalar code (~10x slower).
    """
    seg, kseg, tseg = row[b0:b1], keys[b0:b1], theta_keys[b0:b1]
    m = _key(seg[0])
    h = 0
    for r in range(b1 - b0):
        kk = _key(seg[r])
        kseg[r] = kk
        m = max(m, kk)
        h += kk >= tseg[r]
    return m, h


@njit(inline="always")
def _record_hits(keys, theta_keys, b0, b1, bj, a, kth, rec_cols, rec_scores, n_rec):  # pragma: no cover
    """Score the block's columns with key >= theta exactly; record those beating the column's
    k-th best. Returns the new record count, or -1 once the row's slots overflow."""
    cap = rec_cols.shape[0]
    for i in range(b0, b1):
        if keys[i] >= theta_keys[i]:
            e = _dot(bj, a[i])
            if e > kth[i]:
                if n_rec >= cap:
                    return -1
                rec_cols[n_rec], rec_scores[n_rec] = i, e
                n_rec += 1
    return n_rec


@njit(inline="always")
def _block_margins(row, fbuf, ibuf, t32, b0, b1):  # pragma: no cover - compiled
    """Computed ``score - t`` of ``row[b0:b1]`` into ``fbuf[b0:b1]``; returns their max."""
    seg, iseg, fseg, tseg = row[b0:b1], ibuf[b0:b1], fbuf[b0:b1], t32[b0:b1]
    for r in range(b1 - b0):
        iseg[r] = np.int32(seg[r]) << 16  # bf16 bits are float32's top half
    m = -np.inf
    for r in range(b1 - b0):
        fseg[r] -= tseg[r]
        m = max(m, fseg[r])
    return m


@njit(parallel=True, fastmath=_F, cache=True, nogil=True)
def row_maxima(tile, n_rows, b, a, set_bounds, has_t, t, t32, slack, theta_keys, kth,
               out_max, out_arg, out_margin, out_marg, rec_cols, rec_scores, rec_n):  # pragma: no cover - compiled
    """One read of each training row j < n_rows of the tile. Per eval set s: the exact max of
    s_ji (and of s_ji - t_i for sets with thresholds) over the set's columns and the column
    attaining it (ties -> lowest, as an index within the set). Top-k hits: columns with
    score >= theta whose exact score beats the column's k-th best ``kth`` go to the row's slots
    ``rec_*[j]``; ``rec_n[j]`` counts them, or is -1 when they overflow (then
    :func:`topk_hits` redoes that row).

    Columns are read in blocks of ``_BLOCK``; a block is scanned again only when its maximum is
    within ``slack`` (twice the error bound) of the row's maximum or it holds a hit. Candidates
    are re-scored exactly from ``b`` (train rows, float32 [c, d]) and ``a`` (eval rows, [q, d]).
    """
    q = a.shape[0]
    n_tasks = (n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    n_sets = set_bounds.shape[0] - 1
    for task in prange(n_tasks):
        keys = np.empty(q, np.int16)
        ibuf = np.empty(q, np.int32)
        fbuf = ibuf.view(np.float32)
        block_max = np.empty(q // _BLOCK + n_sets + 1, np.int16)
        block_fmax = np.empty(q // _BLOCK + n_sets + 1, np.float32)
        ibuf1 = np.empty(1, np.int32)
        fbuf1 = ibuf1.view(np.float32)
        for j in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            row = tile[j]
            n_rec = 0
            # without per-row outputs the columns form one pseudo-set for the hit scan
            for s in range(max(n_sets, 1)):
                lo, hi = (set_bounds[s], set_bounds[s + 1]) if n_sets else (0, q)
                n_blocks = (hi - lo + _BLOCK - 1) // _BLOCK
                m = _key(row[lo])
                for bi in range(n_blocks):
                    b0 = lo + bi * _BLOCK
                    b1 = min(hi, b0 + _BLOCK)
                    bm, h = _block_keys(row, keys, theta_keys, b0, b1)
                    block_max[bi] = bm
                    m = max(m, bm)
                    if h and n_rec >= 0:
                        n_rec = _record_hits(keys, theta_keys, b0, b1, b[j], a, kth, rec_cols[j], rec_scores[j], n_rec)
                if not n_sets:
                    continue
                floor = _ceil_key(_key_value(m, ibuf1, fbuf1) - slack, ibuf1, fbuf1)
                best, arg = -np.inf, -1
                for bi in range(n_blocks):
                    if block_max[bi] >= floor:
                        for i in range(lo + bi * _BLOCK, min(hi, lo + (bi + 1) * _BLOCK)):
                            if keys[i] >= floor:
                                e = _dot(b[j], a[i])
                                if e > best:  # ascending i: the first of equal maxima stays
                                    best, arg = e, i
                out_max[s, j], out_arg[s, j] = best, arg - lo
                if has_t[s]:
                    mf = -np.inf
                    for bi in range(n_blocks):
                        b0 = lo + bi * _BLOCK
                        block_fmax[bi] = _block_margins(row, fbuf, ibuf, t32, b0, min(hi, b0 + _BLOCK))
                        mf = max(mf, block_fmax[bi])
                    best, arg = -np.inf, -1
                    for bi in range(n_blocks):
                        if block_fmax[bi] >= mf - slack:
                            for i in range(lo + bi * _BLOCK, min(hi, lo + (bi + 1) * _BLOCK)):
                                if fbuf[i] >= mf - slack:
                                    e = _dot(b[j], a[i]) - t[i]
                                    if e > best:
                                        best, arg = e, i
                    out_margin[s, j], out_marg[s, j] = best, arg - lo
            rec_n[j] = n_rec


@njit(parallel=True, fastmath=_F, cache=True, nogil=True)
def topk_hits(tile, rows, b, a, theta_keys, kth, out_cols, out_scores, out_n):  # pragma: no cover - compiled
    """The top-k hits of the given rows (whose slots in :func:`row_maxima` overflowed): for each
    column with score >= theta, the exact score, kept (in ``out_*[u]``) when it beats the
    column's k-th best; ``out_n[u]`` counts them. Blocks without a hit are skipped."""
    q = a.shape[0]
    for u in prange(rows.shape[0]):
        j = rows[u]
        keys = np.empty(q, np.int16)
        row = tile[j]
        n = 0
        for bi in range((q + _BLOCK - 1) // _BLOCK):
            b0, b1 = bi * _BLOCK, min(q, (bi + 1) * _BLOCK)
            if _block_keys(row, keys, theta_keys, b0, b1)[1] == 0:
                continue
            for i in range(b0, b1):
                if keys[i] >= theta_keys[i]:
                    e = _dot(b[j], a[i])
                    if e > kth[i]:
                        out_cols[u, n], out_scores[u, n] = i, e
                        n += 1
        out_n[u] = n


@njit(parallel=True, cache=True, nogil=True)
def merge_topk(rows, scores, cols, starts, hit_rows, hit_scores):  # pragma: no cover - compiled
    """Merge each touched column's sorted hits into its sorted top-k (in place).

    ``rows``/``scores`` [n_cols, k] are sorted by (score desc, row asc); the hits of column
    ``cols[u]`` are ``hit_*[starts[u]:starts[u + 1]]``, sorted the same way, with rows all later
    than the held ones.
    """
    k = rows.shape[1]
    for u in prange(cols.shape[0]):
        c = cols[u]
        old_r = rows[c].copy()
        old_s = scores[c].copy()
        x, y = 0, starts[u]
        for out in range(k):
            take_old = y >= starts[u + 1] or (
                x < k and (old_s[x] > hit_scores[y] or (old_s[x] == hit_scores[y] and old_r[x] <= hit_rows[y]))
            )
            if take_old:
                rows[c, out], scores[c, out] = old_r[x], old_s[x]
                x += 1
            else:
                rows[c, out], scores[c, out] = hit_rows[y], hit_scores[y]
                y += 1


_announced = False


def note_first_compile() -> None:
    """Say once per process when the kernels are about to be compiled (no cached machine code
    for this CPU and numba yet): the first call on a fresh install takes ~40 s more."""
    global _announced
    if _announced:
        return
    _announced = True
    from pathlib import Path

    from oodlab.utils.progress import summary

    folder = Path(row_maxima._cache._cache_path)
    if not any(folder.glob(f"{Path(__file__).stem}.row_maxima-*.nbi")):
        summary(f"neighbors: compiling the similarity kernels for this CPU once (~40 s; cached in {folder})")


def run_tile(tile: np.ndarray, n_rows: int, b: np.ndarray, a: np.ndarray, set_bounds: np.ndarray,
             has_t: np.ndarray, t: np.ndarray, t32: np.ndarray, slack: float, theta_keys: np.ndarray, kth: np.ndarray):
    """Run :func:`row_maxima` (and :func:`topk_hits` for rows whose slots overflowed) on a bf16
    tile given as int16 bits [c, q]; ``t``/``t32``: thresholds per column in float64/float32.

    Returns:
        (max [S, c], arg [S, c], margin [S, c], margin arg [S, c]) and the top-k hits as
        (columns, tile rows, exact scores).
    """
    note_first_compile()
    n_sets = len(set_bounds) - 1
    out = (np.empty((n_sets, n_rows)), np.empty((n_sets, n_rows), np.int64),
           np.empty((n_sets, n_rows)), np.empty((n_sets, n_rows), np.int64))
    rec_cols = np.empty((n_rows, _HIT_SLOTS), np.int64)
    rec_scores = np.empty((n_rows, _HIT_SLOTS), np.float64)
    rec_n = np.empty(n_rows, np.int64)
    row_maxima(tile, n_rows, b, a, set_bounds, has_t, t, t32, float(slack), theta_keys, kth,
               *out, rec_cols, rec_scores, rec_n)
    if not rec_n.any():
        return out, (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    hits = _flatten(rec_cols, rec_scores, np.maximum(rec_n, 0), np.arange(n_rows))
    overflow = np.flatnonzero(rec_n < 0)
    if len(overflow):
        more_cols = np.empty((len(overflow), a.shape[0]), np.int64)
        more_scores = np.empty((len(overflow), a.shape[0]), np.float64)
        more_n = np.empty(len(overflow), np.int64)
        topk_hits(tile, overflow, b, a, theta_keys, kth, more_cols, more_scores, more_n)
        more = _flatten(more_cols, more_scores, more_n, overflow)
        hits = tuple(np.concatenate(x) for x in zip(hits, more))
    return out, hits


def _flatten(cols: np.ndarray, scores: np.ndarray, counts: np.ndarray, rows: np.ndarray):
    """Slots [n, w] with ``counts`` used per row -> flat (columns, rows, scores)."""
    used = np.arange(cols.shape[1]) < counts[:, None]
    return cols[used], np.repeat(rows, counts), scores[used]
