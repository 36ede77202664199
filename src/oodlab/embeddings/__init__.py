"""The embedding store (clip-retrieval layout plus an ``oodlab.json`` sidecar) and ``embed``."""

from oodlab.embeddings.store import Chunk, EmbeddingStore
from oodlab.embeddings.validate import store_info, store_validate

__all__ = ["Chunk", "EmbeddingStore", "store_info", "store_validate"]
