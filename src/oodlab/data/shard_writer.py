"""Writing webdataset shards in the layout img2dataset writes (see :mod:`oodlab.data.shards`)."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from oodlab.data.tarformat import check_member_path
from oodlab.utils.atomic import CommitOnExit, PendingPath, write_json, write_parquet
from oodlab.utils.errors import InputError

#: Fixed tar header fields, so that a shard's bytes depend only on its content.
_TAR_MTIME = 0
_TAR_MODE = 0o644


def make_key(shard_index: int, index: int, per_shard: int = 10_000) -> str:
    """img2dataset's key: shard id (5 digits) followed by the index zero-padded to the number of
    digits of ``per_shard - 1`` (4 for 10,000 per shard)."""
    width = max(1, math.ceil(math.log10(per_shard))) if per_shard > 1 else 1
    if not 0 <= index < 10**width:
        raise ValueError(f"index {index} does not fit {width} digits")
    return f"{shard_index:05d}{index:0{width}d}"


class ShardWriter(CommitOnExit):
    """Writes one shard (tar + parquet + stats) atomically: nothing appears under the final names
    until :meth:`close`, and the tar is renamed last, so an existing tar means a complete shard.

    Args:
        folder: output folder.
        name: shard name without extension (``"00000"``).
        columns: the parquet columns, in order; records missing a column get null.
        schema: optional pyarrow schema of the parquet, so that every shard of a set gets the same
            column types even when a column is all-null in one shard.
    """

    def __init__(self, folder: str | Path, name: str, columns: Iterable[str] = ("key", "caption", "status"),
                 schema: Any = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.columns = list(columns) if schema is None else list(schema.names)
        self.schema = schema
        self._records: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._pending = PendingPath(self.tar_path)
        self._tar = tarfile.open(self._pending.tmp, "w", format=tarfile.PAX_FORMAT)
        self._closed = False

    @property
    def tar_path(self) -> Path:
        return self.folder / f"{self.name}.tar"

    def __len__(self) -> int:
        return len(self._records)

    def write(self, key: str, members: Mapping[str, bytes], record: Mapping[str, Any] | None = None) -> None:
        """Add a sample: ``members`` maps extension to bytes (written in the given order)."""
        if key in self._keys:
            raise InputError(self.tar_path, f"duplicate key {key}", "keys must be unique within a shard")
        self._keys.add(key)
        for ext, data in members.items():
            name = f"{key}.{ext}"
            check_member_path(self.tar_path, name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = _TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        row = {"key": key}
        row.update(record or {})
        self._records.append(row)

    def close(self) -> Path:
        """Commit the shard: write parquet and stats, then rename the tar into place."""
        if self._closed:
            return self.tar_path
        import pyarrow as pa

        self._tar.close()
        columns = self.columns + sorted({k for r in self._records for k in r} - set(self.columns))
        rows = [{c: r.get(c) for c in columns} for r in self._records]
        if self.schema is not None:
            extra = set(columns) - set(self.schema.names)
            if extra:
                raise ValueError(f"records have columns {sorted(extra)} that the schema lacks")
            table = pa.Table.from_pylist(rows, schema=self.schema)
        else:
            table = pa.Table.from_pylist(rows)
        write_parquet(self.folder / f"{self.name}.parquet", table)
        statuses = [r.get("status", "success") for r in self._records]
        write_json(
            self.folder / f"{self.name}_stats.json",
            {
                "count": len(self._records),
                "successes": sum(s == "success" for s in statuses),
                "failed_to_download": sum(s != "success" for s in statuses),
            },
        )
        self._pending.commit()
        self._closed = True
        return self.tar_path

    def abort(self) -> None:
        """Discard the shard (its temporary tar is removed)."""
        if not self._closed:
            self._tar.close()
            self._pending.discard()
            self._closed = True


def shard_complete(folder: str | Path, name: str) -> bool:
    """Whether a shard written by :class:`ShardWriter` is complete (its tar was committed last)."""
    folder = Path(folder)
    return all((folder / f"{name}{suffix}").exists() for suffix in (".tar", ".parquet", "_stats.json"))

