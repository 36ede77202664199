"""Subsets of a training pool: pruning rules, semantic deduplication, and materialising a key
list as new webdataset shards.

- :mod:`~oodlab.subsets.prune`: ``near`` / ``far`` / ``aligned`` / ``random`` rules over the
  outputs of ``oodlab neighbors``; each writes ``kept.parquet`` and ``removed.parquet``.
- :mod:`~oodlab.subsets.dedup`: SemDeDup-style deduplication of an embedding store.
- :mod:`~oodlab.subsets.reshard`: ``oodlab subset``: copy the samples of a key list out of
  webdataset shards into new shards, byte for byte.

Every rule writes key lists only; the source data is never modified. Key lists chain: any
``kept.parquet`` can be passed as ``keep_from`` to another rule or as the key list of
:func:`~oodlab.subsets.reshard.subset`.
"""

from oodlab.subsets.dedup import dedup, dedup_quality
from oodlab.subsets.prune import prune_aligned, prune_far, prune_near, prune_random
from oodlab.subsets.reshard import subset
from oodlab.subsets.uids import key_uids, uid_hex

__all__ = [
    "dedup",
    "dedup_quality",
    "key_uids",
    "prune_aligned",
    "prune_far",
    "prune_near",
    "prune_random",
    "subset",
    "uid_hex",
]
