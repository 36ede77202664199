"""Choosing and configuring a faiss index: the default factory for a store's size and a memory
budget (a ladder of rules with their memory model), and the search parameters of an index.

The stages that build and search indexes are in :mod:`oodlab.similarity.index`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oodlab.utils.errors import InputError

#: stores with fewer rows get an exact ``Flat`` index (an ANN index has no benefit there)
FLAT_MAX_ROWS = 50_000
#: stores with fewer rows get ``HNSW32`` when it fits (build ~45 s per 200k rows on 2 cores)
HNSW_MAX_ROWS = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
#: product-quantizer sizes tried, largest (most accurate) first; each must divide the dim
PQ_SIZES = (64, 48, 32, 24, 16, 12, 8, 4)
#: training sample: ``TRAIN_PER_CENTROID * nlist`` rows, at least MIN, at most MAX (and the store)
TRAIN_PER_CENTROID = 64
MIN_TRAIN_ROWS = 1 << 16
MAX_TRAIN_ROWS = 1 << 20


# -- the default factory ---------------------------------------------------------------------
def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: 4 sqrt(n) rounded to the nearest power of 2 (autofaiss)."""
    return 1 << max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))


def _flat_bytes(n: int, d: int) -> int:
    return 4 * n * d


def _hnsw_bytes(n: int, d: int) -> int:
    # float32 rows + 2M int32 links on level 0, ~10% more for the upper levels
    return int(n * (4 * d + 1.1 * 2 * HNSW_M * 4))


def _ivf_flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + 8) + 4 * ivf_nlist(n) * d  # codes + int64 ids + centroids


def _ivf_pq_bytes(n: int, d: int, m: int) -> int:
    return n * (m + 8) + 4 * ivf_nlist(n) * d + 4 * 256 * d  # codes + ids + centroids + codebooks


def _pq_size(n: int, d: int, budget: int) -> int | None:
    return next((m for m in PQ_SIZES if d % m == 0 and m <= d and _ivf_pq_bytes(n, d, m) <= budget), None)


@dataclass(frozen=True)
class FactoryRule:
    """One rung of the default-factory ladder: applies when ``applies(n, d, budget)``."""

    applies: Callable[[int, int, int], bool]
    factory: Callable[[int, int, int], str]
    estimate: Callable[[int, int, int], int]


#: the ladder of :func:`choose_factory`, tried in order (see its docstring)
FACTORY_RULES: dict[str, FactoryRule] = {
    "flat": FactoryRule(
        lambda n, d, b: n < FLAT_MAX_ROWS and _flat_bytes(n, d) <= b,
        lambda n, d, b: "Flat",
        lambda n, d, b: _flat_bytes(n, d),
    ),
    "hnsw": FactoryRule(
        lambda n, d, b: n < HNSW_MAX_ROWS and _hnsw_bytes(n, d) <= b,
        lambda n, d, b: f"HNSW{HNSW_M}",
        lambda n, d, b: _hnsw_bytes(n, d),
    ),
    "ivf-flat": FactoryRule(
        lambda n, d, b: _ivf_flat_bytes(n, d) <= b,
        lambda n, d, b: f"IVF{ivf_nlist(n)},Flat",
        lambda n, d, b: _ivf_flat_bytes(n, d),
    ),
    "ivf-pq": FactoryRule(
        lambda n, d, b: _pq_size(n, d, b) is not None,
        lambda n, d, b: f"IVF{ivf_nlist(n)},PQ{_pq_size(n, d, b)}",
        lambda n, d, b: _ivf_pq_bytes(n, d, _pq_size(n, d, b) or 0),
    ),
}


def choose_factory(n: int, d: int, memory_bytes: int) -> tuple[str, str, int]:
    """The default faiss factory string for ``n`` rows of dimension ``d`` within ``memory_bytes``.

    The first rung that applies wins (a smaller-memory rung is taken when a bigger one does not fit):

    1. ``Flat`` (exact) when ``n < FLAT_MAX_ROWS`` (50,000): an ANN index has no benefit there.
    2. ``HNSW32`` (efConstruction 80, efSearch 256) when ``n < HNSW_MAX_ROWS`` (1,000,000) and
       ``n (4 d + 1.1 * 2 * 32 * 4)`` bytes fit.
    3. ``IVF{nlist},Flat`` with ``nlist = 4 sqrt(n)`` rounded to a power of 2 when
       ``n (4 d + 8) + 4 nlist d`` bytes fit (nprobe nlist / 16).
    4. ``IVF{nlist},PQ{m}`` with the largest ``m`` in 64, 48, 32, 24, 16, 12, 8, 4 that divides
       ``d`` and makes ``n (m + 8) + 4 nlist d + 4 * 256 d`` bytes fit.

    Returns:
        (factory string, rule name, estimated index bytes).

    Raises:
        InputError: when not even the smallest IVF-PQ index fits.
    """
    for name, rule in FACTORY_RULES.items():
        if rule.applies(n, d, memory_bytes):
            return rule.factory(n, d, memory_bytes), name, rule.estimate(n, d, memory_bytes)
    raise InputError(
        None,
        f"no index for {n} rows of dim {d} fits in {memory_bytes / 2**30:.2f} GiB",
        "raise --memory-gb or pass --factory",
    )


def machine_memory_bytes() -> int:
    """Total RAM of this machine (``MemTotal`` of /proc/meminfo, else sysconf)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def import_faiss() -> Any:
    """Import faiss without its loader's INFO lines about CPU-specific builds."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss  # noqa: I001

    return faiss


# -- search parameters -----------------------------------------------------------------------
def hnsw_of(index: Any) -> Any | None:
    faiss = import_faiss()

    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return idx if hasattr(idx, "hnsw") else None


def has_ivf(index: Any) -> bool:
    faiss = import_faiss()

    return faiss.try_extract_index_ivf(index) is not None


def default_nprobe(index: Any) -> int:
    faiss = import_faiss()

    nlist = faiss.extract_index_ivf(index).nlist
    return max(1, min(nlist, max(8, nlist // 16)))


#: search parameter (faiss ParameterSpace name) -> (index has it?, default value)
SEARCH_PARAMS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], int]]] = {
    "nprobe": (has_ivf, default_nprobe),
    "efSearch": (lambda ix: hnsw_of(ix) is not None, lambda ix: HNSW_EF_SEARCH),
}


def default_search_params(index: Any) -> dict[str, int]:
    return {name: int(default(index)) for name, (has, default) in SEARCH_PARAMS.items() if has(index)}


def apply_search_params(index: Any, params: dict[str, int], where: Path | None = None) -> None:
    faiss = import_faiss()

    space = faiss.ParameterSpace()
    for name, value in params.items():
        flag = {"nprobe": "--nprobe", "efSearch": "--ef-search"}[name]
        if not SEARCH_PARAMS[name][0](index):
            raise InputError(where, f"{flag} {value} does not apply to this index ({type(faiss.downcast_index(index)).__name__})",
                             f"drop {flag}")
        if value < 1:
            raise InputError(where, f"{flag} is {value}", f"give {flag} >= 1")
        space.set_index_parameter(index, name, value)
