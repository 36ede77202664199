"""DataComp-style uid arrays and open_clip training arguments for a materialised subset.

DataComp's ``resharder.py -s subset.npy`` takes a SORTED numpy array of 128-bit uids, each stored
as two big-endian halves in a structured dtype ``np.dtype("u8,u8")``: the uid hex string
``h`` (32 hex digits) becomes ``(int(h[:16], 16), int(h[16:], 16))``.

oodlab keys are not such uids (img2dataset keys are 9 digits), so a key is mapped to a uid by
hashing: ``uid_hex(key) = sha256(key as UTF-8).hexdigest()[:32]``, i.e. the first 16 bytes of the
SHA-256 digest; the array holds those 16 bytes as two big-endian uint64. To filter oodlab shards
with DataComp's resharder, each sample's json would need ``"uid": uid_hex(key)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from oodlab.utils.patterns import brace_pattern

UID_DTYPE = np.dtype("u8,u8")


def uid_hex(key: str) -> str:
    """The 32-hex-digit uid of a key: the first 16 bytes of sha256(key.encode('utf-8'))."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def key_uids(keys: Iterable[str]) -> np.ndarray:
    """Sorted ``np.dtype("u8,u8")`` array of the keys' uids (DataComp subset format)."""
    raw = b"".join(hashlib.sha256(k.encode("utf-8")).digest()[:16] for k in keys)
    halves = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    out = np.empty(len(halves), UID_DTYPE)
    out["f0"], out["f1"] = halves[:, 0], halves[:, 1]
    out.sort(order=["f0", "f1"])
    return out


def openclip_args(shards: Sequence[Path], num_samples: int) -> dict[str, object]:
    """open_clip's ``--train-data`` (a brace pattern over the shards) and ``--train-num-samples``."""
    pattern = brace_pattern(list(shards))
    return {
        "train_data": pattern,
        "train_num_samples": int(num_samples),
        "dataset_type": "webdataset",
        "command_line": f"--train-data '{pattern}' --train-num-samples {int(num_samples)} --dataset-type webdataset",
    }
