"""oodlab: where does a CLIP model's out-of-distribution accuracy come from?

The package reads like the pipeline: :mod:`oodlab.data` (shards, folders, the synthetic world)
-> :mod:`oodlab.models` -> :mod:`oodlab.embeddings` (the embedding store, ``embed``)
-> similarity -> subsets -> train/eval -> analysis -> report.
"""

from oodlab import _compat

_compat.install()

__version__ = "0.1.0"
