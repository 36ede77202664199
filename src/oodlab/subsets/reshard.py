"""``oodlab subset``: materialise a key list from webdataset shards into new shards.

Two phases, each split into idempotent units run by ``workers`` processes:

1. scan (one unit per input tar): :func:`~oodlab.data.tarindex.index_tar` reads the tar's
   headers, the samples whose key was requested are selected, their metadata rows are written
   to ``OUT/.staging/index/{i:05d}.parquet`` and their member spans to ``{i:05d}.npz`` (both
   atomically, the npz last). A requested sample without an image member (none of
   :data:`~oodlab.data.tarformat.IMAGE_EXTENSIONS`: a caption alone is no training sample) is
   not selected; its key is kept in the npz to be listed as skipped. A unit whose two files
   exist is skipped on re-run. A truncated input tar is refused, naming the byte of the damage
   and the first sample lost (:class:`~oodlab.data.tarformat.TruncatedShardError`).
2. assemble (one unit per output shard): the plan is every selected sample in input order (the
   order of ``data`` as given, a folder's tars sorted by name), then tar order within a shard;
   a key found in several inputs is written once, from its first input. Output shard j holds
   plan rows ``[j * per_shard, (j + 1) * per_shard)``: ``{j:05d}.tar`` (the samples' original
   members, headers and bytes unchanged), ``{j:05d}.parquet`` and ``{j:05d}_stats.json``
   (below); a complete shard (its tar exists) is skipped.

The plan depends only on the inputs and the keys, never on ``workers`` or on which units ran
before a kill, so a killed run re-run gives byte-identical output to a clean one.

``{j:05d}.parquet``: one row per sample, in tar order: the sample's row of its input's
``{shard}.parquet`` with every column (img2dataset's url, caption, key, status, error_message,
width, height, original_width, original_height, exif, sha256 and the ``--save_additional_columns``
ones), then ``source_shard`` (the input tar's name; an input's own ``source_shard`` column is
replaced). Every output shard has the same schema: the union of all inputs' columns, in order of
first appearance, types promoted as ``pyarrow.unify_schemas(promote_options="permissive")`` does
(int32 with int64 gives int64; incompatible types are refused), every column nullable; a column
an input lacks is null in its rows. An input without a parquet gives key, caption (its ``txt``
member, null without one) and status ``success``; a sample missing from its input's parquet gets
the same values in those of the three columns that the parquet has, null elsewhere.

``{j:05d}_stats.json``: img2dataset's stats format (``count``, ``successes``,
``failed_to_download``, ``failed_to_resize``, ``duration``, ``start_time``, ``end_time``,
``status_dict``), for the shard's samples:

- ``count``: samples in the shard (the rows of its parquet).
- ``successes``: rows whose status is ``success``, or null (an input without a status column:
  the sample is in the tar). This is what open_clip's sample count is read from.
- ``failed_to_download``, ``failed_to_resize``: rows with that status. img2dataset's tars hold
  only successful samples (its failures are parquet rows without members: a requested key of one
  is listed as missing), so both are 0 unless an input's tar holds samples its parquet marks failed.
- ``status_dict``: ``{reason: rows}`` counted as img2dataset counts it (``success`` for a success,
  else the row's error_message, else its status), most frequent first, ties by reason.
- every other field (img2dataset's ``duration``, ``start_time``, ``end_time``, and any field
  another writer added): the contributing inputs' value (the inputs whose samples the shard
  holds) when each of them has a ``_stats.json`` with that field and all values are equal; else
  the field is dropped. ``duration``, ``start_time`` and ``end_time`` thus survive only in a shard
  drawn from one input, and then describe that input's download run (all of its ``count`` urls),
  not the making of the subset.

Then verification: every requested key is either written, or listed in ``skipped.parquet``
(key, source_shard, reason: its sample was found, in no input with an image member), or in
``missing.parquet``; requested keys given more than once are listed in ``duplicates.parquet``
and written once.
Also written: ``written.parquet`` (key, shard, source_shard: the listing of written keys),
``openclip.json`` (``--train-data`` brace pattern and ``--train-num-samples``), ``uids.npy``
(DataComp-style sorted ``u8,u8`` uids, see :mod:`oodlab.subsets.uids`) and ``manifest.json``
(written last; a re-run of a completed run returns it).

The key list is checked before anything is written: a key no sample can have (a NUL, a dot in
its base name: :func:`~oodlab.data.tarformat.sample_key_problem`) is refused naming its row. So
no key holds a NUL, and the numpy ``S`` arrays keys are matched in (which drop trailing NULs)
hold every key exactly; the tar readers refuse member names with a NUL.

Memory: the requested keys (a sorted bytes array, memory-mapped by the workers), the plan (key,
spans and staged row of each selected sample, each input's non-counter stats fields) and the
rows schema. A scan unit reads one input parquet; an assemble unit reads the staged rows of its
inputs one at a time. No phase holds all input parquets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from oodlab.data.shard_writer import shard_complete
from oodlab.data.sources import given_paths, shard_paths
from oodlab.data.tarformat import IMAGE_EXTENSIONS, sample_key_problem
from oodlab.data.tarindex import index_tar
from oodlab.data.workers import call_carrying, returned
from oodlab.subsets.copyshard import RECOMPUTED_STATS, SOURCE_COLUMN, ShardPlan, write_shard
from oodlab.subsets.keylists import read_keys, row_name
from oodlab.subsets.uids import key_uids, openclip_args
from oodlab.utils.atomic import atomic_path, read_json, save_npy, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder

log = logging.getLogger(__name__)

STAGING = ".staging"
#: why a requested sample without an image member is listed in skipped.parquet
NO_IMAGE = f"no image member (none of {', '.join(IMAGE_EXTENSIONS)})"
#: missing keys listed in the manifest itself (all of them are in missing.parquet)
MANIFEST_MISSING = 1000


# -- inputs ----------------------------------------------------------------------------------
def requested_keys(keys: str | Path) -> tuple[list[str], dict[str, int]]:
    """(unique keys in first-occurrence order, {key: count} of the keys given more than once).

    Raises:
        InputError: a key no sample can have (:func:`~oodlab.data.tarformat.sample_key_problem`),
            naming its row.
    """
    raw = read_keys(keys)
    unique = list(dict.fromkeys(raw.tolist()))
    for key in unique:
        problem = sample_key_problem(key)
        if problem is not None:
            raise InputError(keys, f"{row_name(keys, raw.tolist().index(key))}: key {key!r} {problem}",
                             "correct or drop that row: a key is a sample's member name without extension (000010023)")
    duplicates: dict[str, int] = {}
    if len(unique) != len(raw):
        values, counts = np.unique(raw.astype(str), return_counts=True)
        duplicates = {str(v): int(c) for v, c in zip(values, counts) if c > 1}
    return unique, duplicates


# -- phase 1 ---------------------------------------------------------------------------------
def _members_of(bounds: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member indices of ``samples`` in order, int64 [len(samples) + 1] offsets into them)."""
    counts = bounds[samples + 1] - bounds[samples]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    members = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1] - bounds[samples], counts)
    return members, offsets


def scan_input(task: tuple[int, str, str, str]) -> int:
    """Select the requested samples of one input tar into its staging index (a phase-1 unit).

    Writes the selected samples' metadata rows (:func:`input_rows`) to ``{i:05d}.parquet``, then
    the staging index ``{i:05d}.npz`` (its existence marks the unit done), holding per selected
    sample in tar order: ``keys`` (UTF-8 bytes), ``offsets`` into the member spans ``starts`` /
    ``ends``; ``skipped``, the keys of the requested samples without an image member, which are
    not selected; and ``stats``, the JSON of :func:`input_run_fields`. Returns the samples in the tar."""
    i, tar, requested_path, index_path = task
    requested = np.load(requested_path, mmap_mode="r", allow_pickle=False)
    index = index_tar(tar, read_ext=b"txt")
    if len(requested) and len(index):
        pos = np.minimum(np.searchsorted(requested, index.keys), len(requested) - 1)
        wanted = np.flatnonzero(requested[pos] == index.keys)
    else:
        wanted = np.zeros(0, np.int64)
    is_image = np.isin(index.ext, [e.encode() for e in IMAGE_EXTENSIONS])
    images = np.add.reduceat(is_image, index.bounds[:-1]) if len(index) else np.zeros(0, np.int64)  # every sample has a member
    selected, skipped = wanted[images[wanted] > 0], wanted[images[wanted] == 0]
    members, offsets = _members_of(index.bounds, selected)
    is_txt = np.isin(members, np.fromiter(index.payload, np.int64, len(index.payload)))
    sample_of = np.repeat(np.arange(len(selected)), np.diff(offsets))
    with_caption, first = np.unique(sample_of[is_txt], return_index=True)  # the first txt member
    captions: list[str | None] = [None] * len(selected)
    for row, m in zip(with_caption.tolist(), members[is_txt][first].tolist()):
        captions[row] = index.payload[m].decode("utf-8", "replace")
    keys = [k.decode("utf-8", "surrogateescape") for k in index.keys[selected].tolist()]
    write_parquet(rows_path(index_path), input_rows(Path(tar), keys, captions))
    stats = json.dumps(input_run_fields(Path(tar))).encode("utf-8")
    with atomic_path(index_path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f, keys=index.keys[selected], offsets=offsets, starts=index.start[members], ends=index.end[members],
            skipped=index.keys[skipped], stats=np.frombuffer(stats, np.uint8), samples=np.int64(len(index)),
        )
    return len(index)


def rows_path(index_path: str | Path) -> Path:
    """The staged metadata rows beside a staging index (``00003.npz`` -> ``00003.parquet``)."""
    return Path(index_path).with_suffix(".parquet")


def input_rows(tar: Path, keys: list[str], captions: list[str | None]) -> Any:
    """The metadata rows of an input tar's selected samples, one per key in the given order.

    Rows come from ``{tar stem}.parquet`` (every column but ``source_shard``; the first row of a
    key); a key it lacks, or every key when there is no parquet, gets what the tar gives: key,
    caption (its txt member, None without one), status ``success`` (in the columns the parquet
    has; without a parquet these three are the columns).

    Args:
        tar: the input tar.
        keys: the selected samples' keys, in tar order.
        captions: their txt members (UTF-8, invalid bytes replaced), None where absent.

    Returns:
        a pyarrow Table of ``len(keys)`` rows (without schema metadata).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fallback = pa.table({"key": pa.array(keys, pa.string()), "caption": pa.array(captions, pa.string()),
                         "status": pa.array(["success"] * len(keys), pa.string())})
    path = tar.with_suffix(".parquet")
    if not path.is_file():
        return fallback
    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
    except (OSError, pa.ArrowException) as err:
        raise InputError(path, f"cannot be read as parquet ({err})", "repair it, or delete it to use what the tar gives") from None
    if "key" not in schema.names or not (pa.types.is_string(schema.field("key").type)
                                         or pa.types.is_large_string(schema.field("key").type)):
        raise InputError(path, "has no string column 'key'", "write the shard's metadata with img2dataset's key column")
    table = file.read() if keys else schema.empty_table()
    table = table.drop_columns([c for c in table.column_names if c == SOURCE_COLUMN]).replace_schema_metadata(None)
    at = pc.index_in(fallback.column("key"), value_set=table.column("key").combine_chunks().cast(pa.string()))
    rows = table.take(at)
    absent = pc.is_null(at)
    if pc.any(absent).as_py():
        for name in fallback.column_names:
            if name in rows.column_names:
                column = rows.column(name)
                filled = pc.if_else(absent, fallback.column(name).cast(column.type), column)
                rows = rows.set_column(rows.column_names.index(name), rows.schema.field(name), filled)
    return rows


def input_run_fields(tar: Path) -> dict[str, Any] | None:
    """The fields of ``{tar stem}_stats.json`` other than the recomputed counters (None: no file)."""
    path = Path(f"{tar.with_suffix('')}_stats.json")
    if not path.is_file():
        return None
    try:
        stats = read_json(path)
    except (OSError, ValueError) as err:
        raise InputError(path, f"is not readable JSON ({err})", "repair it, or delete it to drop its fields") from None
    if not isinstance(stats, dict):
        raise InputError(path, "is not a JSON object", "write img2dataset's stats format, or delete it")
    return {k: v for k, v in stats.items() if k not in RECOMPUTED_STATS}


# -- phase 2 ---------------------------------------------------------------------------------
def assemble_shard(task: tuple[str, ShardPlan, bool]) -> int:
    """Write one output shard (a phase-2 unit). Returns its tar size in bytes."""
    folder, plan, verify = task
    return write_shard(Path(folder), plan, verify=verify)


@dataclass
class Plan:
    """Every sample to write, in output order (see the module docstring)."""

    sources: list[str]  # input tar paths
    keys: np.ndarray  # object [s]
    sample_source: np.ndarray  # int32 [s]
    sample_row: np.ndarray  # int64 [s]: the sample's row in its input's staged rows
    offsets: np.ndarray  # int64 [s + 1] into the member arrays
    member_start: np.ndarray  # int64 [m]
    member_end: np.ndarray  # int64 [m]
    row_files: list[str]  # per input: its staged rows
    run_fields: list[dict[str, Any] | None]  # per input: its stats fields that are not recomputed
    schema: Any  # pyarrow schema of the rows of every input (the union; source_shard excluded)
    scanned: int  # samples in the input tars
    source_duplicates: int  # selected samples dropped because their key came earlier
    skipped_keys: np.ndarray  # object [k]: requested keys found only in samples without an image member
    skipped_source: np.ndarray  # int32 [k]: the first input each was found in

    def __len__(self) -> int:
        return len(self.keys)

    def shard(self, name: str, lo: int, hi: int) -> ShardPlan:
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        used, src = np.unique(self.sample_source[lo:hi], return_inverse=True)  # only this shard's inputs
        sources = [self.sources[i] for i in used.tolist()]
        names = [Path(p).name for p in sources]
        return ShardPlan(
            name=name, keys=self.keys[lo:hi].tolist(),
            source_shards=[names[i] for i in src.tolist()], sources=sources,
            members=np.diff(self.offsets[lo : hi + 1]),
            member_source=np.repeat(src, np.diff(self.offsets[lo : hi + 1])).astype(np.int32),
            member_start=self.member_start[a:b], member_end=self.member_end[a:b],
            sample_source=src.astype(np.int32), rows=self.sample_row[lo:hi],
            row_files=[self.row_files[i] for i in used.tolist()], run_fields=[self.run_fields[i] for i in used.tolist()],
            schema=self.schema,
        )


class _Runner:
    """Runs units in this process, or in one pool of ``workers`` spawned processes shared by both
    phases (started on first use: spawning costs about a second per process)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: Any = None

    def run(self, fn: Callable[[Any], Any], tasks: list[Any], description: str, unit: str) -> list[Any]:
        results: list[Any] = []
        with progress(description, total=len(tasks), unit=unit) as advance:
            if self.workers == 0 or len(tasks) <= 1:  # one task gains nothing from a worker
                for t in tasks:
                    results.append(fn(t))
                    advance(1)
                return results
            if self._pool is None:
                self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
            for r in self._pool.imap(functools.partial(call_carrying, fn), tasks):
                results.append(returned(r))  # an InputError arrives as data (oodlab.data.workers)
                advance(1)
        return results

    def __enter__(self) -> "_Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate() if exc[0] is not None else self._pool.close()
            self._pool.join()


# -- the stage --------------------------------------------------------------------------------
def subset(
    keys: str | Path,
    data: Sequence[str | Path],
    out: str | Path,
    *,
    per_shard: int = 10_000,
    workers: int = 1,
    verify: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy the samples of a key list out of webdataset shards into new shards (module docstring).

    Args:
        keys: a key list: parquet with a ``key`` column (e.g. ``kept.parquet``) or ``.txt``.
        data: the input webdataset shards: tars, brace patterns, globs or folders of tars (in this
            order; a shard reached twice is refused).
        out: output folder (``{00000..}.tar`` + parquet + stats, manifest and listings).
        per_shard: samples per output shard (the last may hold fewer).
        workers: processes for the scan and assemble phases (0: in this process; the output does
            not depend on it).
        verify: index every written tar again and check it holds exactly the planned samples.
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the manifest.
    """
    if per_shard < 1 or workers < 0:
        raise InputError(None, f"per_shard must be >= 1 and workers >= 0 (got per_shard={per_shard}, workers={workers})",
                         "pass a positive --per-shard and --workers 0 or more")
    inputs_list = shard_paths(data)
    unique, duplicates = requested_keys(keys)
    requested = np.sort(np.array([k.encode("utf-8", "surrogateescape") for k in unique], dtype=bytes)) if unique else np.zeros(0, "S1")
    run = RunFolder(out, "subset",
                    inputs={"keys": str(keys), "keys_sha256": hashlib.sha256(b"\n".join(requested.tolist())).hexdigest(),
                            "data": [str(p) for p in inputs_list]},
                    parameters={"per_shard": per_shard, "verify": verify}, settings={"workers": workers},
                    reads=[keys, *inputs_list, *map(Path, given_paths(data))])
    done = run.open(overwrite)
    out = run.out
    staging = out / STAGING
    if done is not None:
        shutil.rmtree(staging, ignore_errors=True)  # killed between the manifest and the cleanup
        return done
    (staging / "index").mkdir(parents=True, exist_ok=True)
    save_npy(staging / "requested.npy", requested)

    with Timer() as timer, _Runner(workers) as runner:
        index_paths = [staging / "index" / f"{i:05d}.npz" for i in range(len(inputs_list))]
        todo = [(i, str(p), str(staging / "requested.npy"), str(index_paths[i]))
                for i, p in enumerate(inputs_list) if not (index_paths[i].exists() and rows_path(index_paths[i]).exists())]
        runner.run(scan_input, todo, "subset: scan", "shards")
        plan = _plan(inputs_list, index_paths)
        width = max(5, len(str(max(0, (len(plan) - 1) // per_shard))))
        names = [f"{j:0{width}d}" for j in range(-(-len(plan) // per_shard))]
        tasks = [(str(out), plan.shard(name, j * per_shard, min(len(plan), (j + 1) * per_shard)), verify)
                 for j, name in enumerate(names) if not shard_complete(out, name)]
        runner.run(assemble_shard, tasks, "subset: write", "shards")
    written_keys = plan.keys.tolist()
    written = set(written_keys)
    skipped = set(plan.skipped_keys.tolist())
    missing = [k for k in unique if k not in written and k not in skipped]
    if (len(written) + len(skipped) + len(missing) != len(unique) or len(written) != len(written_keys)
            or len(skipped) != len(plan.skipped_keys) or not written.isdisjoint(skipped)):
        raise RuntimeError("verification failed: written + skipped + missing != requested")  # a bug, not an input problem
    counts = _verify_outputs(out, names, plan, per_shard)
    _write_listings(out, plan, names, per_shard, missing, duplicates)
    tar_bytes = sum((out / f"{n}.tar").stat().st_size for n in names)
    write_json(out / "openclip.json", openclip_args([out / f"{n}.tar" for n in names], len(plan)) if names else
               {"train_data": None, "train_num_samples": 0})
    save_npy(out / "uids.npy", key_uids(written_keys))
    manifest_counts = {
        "requested": len(unique) + sum(c - 1 for c in duplicates.values()),
        "requested_unique": len(unique),
        "duplicate_requested_keys": len(duplicates),
        "input_shards": len(inputs_list),
        "input_samples": plan.scanned,
        "written": len(plan),
        "skipped": len(skipped),
        "missing": len(missing),
        "duplicate_source_keys": plan.source_duplicates,
        "output_shards": len(names),
        "output_bytes": tar_bytes,
        **counts,
    }
    manifest = run.finish(
        counts=manifest_counts,
        outputs={"shards": f"{{{names[0]}..{names[-1]}}}.tar" if names else None, "written": "written.parquet",
                 "skipped": "skipped.parquet", "missing": "missing.parquet", "duplicates": "duplicates.parquet", "openclip": "openclip.json",
                 "uids": "uids.npy", "missing_keys": missing[:MANIFEST_MISSING],
                 "missing_keys_listed": min(len(missing), MANIFEST_MISSING)},
    )
    shutil.rmtree(staging)  # after the manifest: a run killed before this line resumes from staging
    rate = len(plan) / max(timer.seconds, 1e-9)
    summary(
        f"subset: {len(plan)} of {len(unique)} requested samples written to {len(names)} shards "
        f"({len(skipped)} skipped without an image, {len(missing)} missing, {len(duplicates)} keys requested twice or more, {plan.source_duplicates} found in several inputs) "
        f"in {timer.seconds:.1f} s ({rate:,.0f} samples/s, {tar_bytes / max(timer.seconds, 1e-9) / 1e6:,.1f} MB/s) -> {out}"
    )
    return manifest


def _plan(inputs: list[Path], index_paths: list[Path]) -> Plan:
    """Concatenate the staging indexes in input order; a key seen before is dropped. The rows
    schema is the union of the staged rows' schemas (pyarrow's permissive promotion)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys, sources, rows, counts, m_start, m_end, run_fields, skipped, skipped_from = [], [], [], [], [], [], [], [], []
    schema = None
    scanned = 0
    for i, path in enumerate(index_paths):
        with np.load(path, allow_pickle=False) as z:
            scanned += int(z["samples"])
            keys.append(np.char.decode(z["keys"], "utf-8", "surrogateescape").astype(object) if len(z["keys"]) else np.zeros(0, object))
            sources.append(np.full(len(z["keys"]), i, np.int32))
            rows.append(np.arange(len(z["keys"]), dtype=np.int64))
            counts.append(np.diff(z["offsets"]))
            m_start.append(z["starts"])
            m_end.append(z["ends"])
            run_fields.append(json.loads(z["stats"].tobytes().decode("utf-8")))
            skipped += [k.decode("utf-8", "surrogateescape") for k in z["skipped"].tolist()]
            skipped_from += [i] * len(z["skipped"])
        staged = pq.read_schema(rows_path(path))  # the footer only, one input at a time
        try:
            schema = staged if schema is None else pa.unify_schemas([schema, staged], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as err:
            raise InputError(inputs[i].with_suffix(".parquet"), f"has a column whose type does not agree with the earlier inputs' ({err})",
                             "write that column with one type in every shard's parquet") from None
    schema = pa.schema([f.with_nullable(True) for f in schema or []])  # a column missing in one input is null there
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    all_keys, source, row, count = cat(keys, object), cat(sources, np.int32), cat(rows, np.int64), cat(counts, np.int64)
    starts, ends = cat(m_start, np.int64), cat(m_end, np.int64)
    first = ~pd.Index(all_keys).duplicated(keep="first") if len(all_keys) else np.ones(0, bool)
    if not first.all():
        member_keep = np.repeat(first, count)
        all_keys, source, row, count = all_keys[first], source[first], row[first], count[first]
        starts, ends = starts[member_keep], ends[member_keep]
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    # a key skipped in one input may be written from another; listed once, from its first input
    written = set(all_keys.tolist())
    listed: dict[str, int] = {}
    for key, i in zip(skipped, skipped_from):
        if key not in written:
            listed.setdefault(key, i)
    return Plan([str(p) for p in inputs], all_keys, source, row, offsets, starts, ends,
                [str(rows_path(p)) for p in index_paths], run_fields, schema, scanned, int((~first).sum()),
                np.array(list(listed), dtype=object), np.array(list(listed.values()), dtype=np.int32))


def _verify_outputs(out: Path, names: list[str], plan: Plan, per_shard: int) -> dict[str, Any]:
    """Check each output shard's stats against the plan (the tars were checked when written)."""
    for j, name in enumerate(names):
        expected = min(len(plan), (j + 1) * per_shard) - j * per_shard
        stats = read_json(out / f"{name}_stats.json")
        if stats["count"] != expected:
            raise IncompatibleError(out / f"{name}_stats.json", f"counts {stats['count']} samples, the plan {expected}",
                                    "re-run with --overwrite")
    return {"verified_shards": len(names)}


def _write_listings(out: Path, plan: Plan, names: list[str], per_shard: int, missing: Iterable[str],
                    duplicates: dict[str, int]) -> None:
    import pyarrow as pa

    shard_of = [names[i // per_shard] for i in range(len(plan))]
    source_names = [Path(p).name for p in plan.sources]
    write_parquet(out / "written.parquet", pa.table(
        {"key": plan.keys.tolist(), "shard": shard_of, "source_shard": [source_names[i] for i in plan.sample_source.tolist()]},
        schema=pa.schema([("key", pa.string()), ("shard", pa.string()), ("source_shard", pa.string())])))
    write_parquet(out / "skipped.parquet", pa.table(
        {"key": plan.skipped_keys.tolist(), "source_shard": [source_names[i] for i in plan.skipped_source.tolist()],
         "reason": [NO_IMAGE] * len(plan.skipped_keys)},
        schema=pa.schema([("key", pa.string()), ("source_shard", pa.string()), ("reason", pa.string())])))
    write_parquet(out / "missing.parquet", pa.table({"key": pa.array(list(missing), pa.string())}))
    write_parquet(out / "duplicates.parquet", pa.table(
        {"key": pa.array(list(duplicates), pa.string()), "count": pa.array(list(duplicates.values()), pa.int64())}))
