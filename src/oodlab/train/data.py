"""The training data of a run: webdataset shards, their sample count and the manifest they came with.

open_clip's webdataset loader needs ``--train-num-samples``. It is read, per shard, from what
img2dataset and oodlab write next to each tar: ``{shard}_stats.json`` (``successes``, else
``count``), else ``{shard}.parquet`` (rows with status ``success``), else by reading the tar
(samples with a ``txt`` and an image member, extensions in any case, as open_clip's loader reads them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oodlab.data.shards import iter_tar_samples
from oodlab.data.sources import shard_paths
from oodlab.data.tarformat import IMAGE_EXTENSIONS
from oodlab.utils.hashing import sha256_file
from oodlab.utils.manifest import MANIFEST_NAME
from oodlab.utils.patterns import brace_pattern


@dataclass
class TrainData:
    """Resolved training data.

    Attributes:
        shards: the tar files, absolute, in order.
        pattern: open_clip's ``--train-data`` naming exactly those shards.
        count: samples with an image and a caption (what the trainer reads).
        per_shard: samples per shard.
        manifest: the manifest of the stage that wrote the data (path, sha256, stage), if found.
    """

    shards: list[Path]
    pattern: str
    count: int
    per_shard: list[int]
    manifest: dict[str, Any] | None

    def describe(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "shards": len(self.shards), "count": self.count, "manifest": self.manifest}


def _shard_count(tar: Path) -> int:
    stem = tar.with_suffix("")
    stats = Path(f"{stem}_stats.json")
    if stats.is_file():
        try:
            record = json.loads(stats.read_text(encoding="utf-8"))
            value = record.get("successes", record.get("count"))
            if isinstance(value, int):
                return value
        except (OSError, json.JSONDecodeError):
            pass
    parquet = Path(f"{stem}.parquet")
    if parquet.is_file():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        names = pq.read_schema(parquet).names
        if "status" in names:
            status = pq.read_table(parquet, columns=["status"]).column("status")
            return int(pc.sum(pc.equal(status, "success")).as_py() or 0)
        return pq.read_metadata(parquet).num_rows
    return sum(1 for s in iter_tar_samples(tar)
               if "txt" in s.members and any(e in s.members for e in IMAGE_EXTENSIONS))


def _find_manifest(shards: list[Path]) -> dict[str, Any] | None:
    folder = Path(os.path.commonpath([str(s.parent) for s in shards]))
    for candidate in (folder / MANIFEST_NAME, folder.parent / MANIFEST_NAME):
        if candidate.is_file():
            try:
                stage = json.loads(candidate.read_text(encoding="utf-8")).get("stage")
            except (OSError, json.JSONDecodeError, AttributeError):
                stage = None
            return {"path": str(candidate), "sha256": sha256_file(candidate), "stage": stage}
    return None


def resolve_train_data(train_data: str | Path | Sequence[str | Path]) -> TrainData:
    """Shards named by ``train_data``, resolved as every stage resolves shards
    (:func:`oodlab.data.sources.shard_paths`): folders of ``.tar`` shards (a pool, an oodlab
    subset), quoted brace patterns (``pool/{00000..00011}.tar``), globs or tar paths.

    Raises:
        InputError: nothing matches, a path that is not shards, or a shard named twice.
    """
    shards = [s.absolute() for s in shard_paths(train_data)]
    per_shard = [_shard_count(s) for s in shards]
    return TrainData(shards, brace_pattern(shards), sum(per_shard), per_shard, _find_manifest(shards))
