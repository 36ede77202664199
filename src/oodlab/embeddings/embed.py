"""``oodlab embed``: image (and caption) embeddings of shards, ImageFolder trees or file lists.

Work is split into *units*, one per store part: one input tar, or a fixed number of images of
a folder or list. A unit is processed by one DataLoader worker (decode + resize + crop, as
uint8) and by the model in the main process; its part is written atomically with
``stats/part_{i}.json`` last. A re-run skips completed parts, so a killed run (even ``kill -9``)
re-run gives the same store as one clean run: a unit's batches, and so its numbers, do not
depend on what else ran.

Corrupt images are skipped and listed with their key in the sidecar; a truncated tar keeps the
samples before the damage and is listed by name with the first sample it lost and the byte
offset of the damage (``first_lost_key``, ``offset``, in its part record and the sidecar's
``truncated_shards``). A refusal of a tar's members (a path escaping its folder, a link) raised
in a DataLoader worker reaches the caller as the same InputError (:mod:`oodlab.data.workers`). With ``text=True``, a shard sample without a
``txt`` member is recorded, never given an invented caption: it keeps its image row, gets the
all-zero marker row in ``text_emb`` and a null caption, and its key is listed under
``missing_text`` in its part record and (with its source) in the sidecar, and counted in the
summary line (see :mod:`oodlab.embeddings.store`).
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from oodlab.data.folders import FolderSample, read_file_list, scan_image_folder
from oodlab.data.shards import iter_tar_samples
from oodlab.data.sources import FILES, SHARDS, given_paths, resolve_data
from oodlab.data.tarformat import TruncatedShardError
from oodlab.data.workers import CarriedError
from oodlab.embeddings import store as st
from oodlab.embeddings.validate import find_duplicate_keys
from oodlab.models.preprocess import SplitPreprocess
from oodlab.utils.errors import InputError
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder, check_writable

log = logging.getLogger(__name__)

#: json fields not copied to the metadata (they duplicate image_path / caption)
_JSON_SKIP = {"key", "caption", "image_path"}


@dataclass(frozen=True)
class Unit:
    """The input of one store part: a tar, or a slice of a folder / file list."""

    index: int
    source: str
    tar: Path | None = None
    files: tuple[FolderSample, ...] = ()

    @property
    def has_captions(self) -> bool:
        return self.tar is not None


def plan_units(data: Sequence[str | Path], images_per_part: int) -> list[Unit]:
    """Turn image data (:func:`oodlab.data.sources.resolve_data`: shards, ImageFolder roots,
    images, ``.txt`` lists) into units: one per tar, ``images_per_part`` images of a folder or of
    a run of consecutive files and lists (``images_per_part`` >= 1, as :func:`embed` checks).

    Raises:
        InputError: the data resolves to nothing usable (see ``resolve_data``).
    """
    units: list[Unit] = []

    def add_files(samples: list[FolderSample], label: str) -> None:
        for start in range(0, len(samples), images_per_part):
            chunk = tuple(samples[start : start + images_per_part])
            units.append(Unit(len(units), f"{label}[{start}:{start + len(chunk)}]", files=chunk))

    for kind, group in itertools.groupby(resolve_data(data), key=lambda s: s.kind):
        sources = list(group)
        if kind == FILES:
            add_files(read_file_list([s.path for s in sources]), "files")
        for source in sources if kind != FILES else []:
            if kind == SHARDS:
                units.append(Unit(len(units), str(source.path), tar=source.path))
            else:
                add_files(scan_image_folder(source.path).samples, str(source.path))
    return units


class _UnitStream(torch.utils.data.IterableDataset):
    """Iterable over batches of units; each DataLoader worker takes every W-th unit.

    Yields dicts: ``{"unit", "images", "keys", "captions", "meta"}`` per batch,
    ``{"unit", "done": True, "skipped", "truncated"}`` once a unit is exhausted, and
    ``{"unit", "error": CarriedError}`` (then stops) when a unit's input is refused.
    """

    def __init__(self, units: Sequence[Unit], prep: SplitPreprocess, batch_size: int):
        self.units, self.prep, self.batch_size = list(units), prep, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.units if info is None else self.units[info.id :: info.num_workers]
        for unit in mine:
            try:
                yield from self._unit_batches(unit)
            except InputError as err:  # as data: a worker's exception would reach the caller as a RuntimeError
                yield {"unit": unit.index, "error": CarriedError.of(err)}
                return

    def _records(self, unit: Unit) -> Iterator[tuple[str, bytes | None, Path | None, str | None, dict[str, Any]]]:
        if unit.tar is not None:
            for sample in iter_tar_samples(unit.tar):
                try:
                    meta = {k: v for k, v in sample.meta.items() if k not in _JSON_SKIP and _scalar(v)}
                except InputError:
                    meta = {}
                yield sample.key, sample.image, None, sample.caption, meta
        else:
            for s in unit.files:
                meta = {} if s.label is None else {"label": s.label, "class_name": s.class_name}
                yield s.key, None, s.path, None, meta

    def _unit_batches(self, unit: Unit) -> Iterator[dict[str, Any]]:
        skipped: list[dict[str, str]] = []
        truncated = None
        batch: dict[str, list] = {"images": [], "keys": [], "captions": [], "meta": []}

        def emit() -> dict[str, Any]:
            nonlocal batch
            images = batch.pop("images")
            out = {"unit": unit.index, "images": self.prep.stack(images)}
            out.update(batch)
            batch = {"images": [], "keys": [], "captions": [], "meta": []}
            return out

        try:
            for key, data, path, caption, meta in self._records(unit):
                try:
                    if data is None and path is None:
                        raise ValueError("sample has no image member")
                    img = self.prep.image(data if data is not None else path.read_bytes())
                except Exception as err:  # PIL raises many types for damaged files
                    reason = re.sub(r"<[^>]*>", "<image>", f"{type(err).__name__}: {err}")[:200]
                    skipped.append({"key": key, "source": unit.source, "reason": reason})
                    continue
                batch["images"].append(img)
                batch["keys"].append(key)
                batch["captions"].append(caption)
                batch["meta"].append(meta)
                if len(batch["keys"]) == self.batch_size:
                    yield emit()
        except TruncatedShardError as err:
            truncated = {"error": str(err), "first_lost_key": err.first_lost, "offset": err.offset}
        if batch["keys"]:
            yield emit()
        yield {"unit": unit.index, "done": True, "skipped": skipped, "truncated": truncated}


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


# -- the stage ----------------------------------------------------------------------------------
def embed(
    data: Sequence[str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    checkpoint: str | Path | None = None,
    text: bool = False,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 1,
    images_per_part: int = 10_000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed images (and captions) into an embedding store (clip-retrieval layout + oodlab.json).

    Args:
        data: webdataset tars (paths or brace patterns, or a folder of tars), ImageFolder
            roots (keys are paths relative to the root, labels from folder names), image files
            or ``.txt`` lists of image paths.
        out: the store folder; completed parts found there are kept (resume).
        model: open_clip architecture or oodlab tiny config.
        checkpoint: local weights: a file, an open_clip model folder or an ``oodlab train`` run
            (its final checkpoint); None: seeded random weights, for pipelines and tests.
        text: also embed captions (the ``txt`` member of shards) into ``text_emb/``; a sample
            without one gets the all-zero marker row and is listed under ``missing_text``.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, or ``bf16`` (about 5x faster for ViT-B on CPUs with AMX; cosine
            >= 0.997 to fp32), or ``fp16`` (GPU).
        batch_size: images per forward pass.
        workers: DataLoader worker processes decoding images (0: decode in this process).
        images_per_part: images per part for folder and list sources (shards: one part each).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        the sidecar dict (``oodlab.json``).
    """
    from oodlab.models import load_model
    from oodlab.models.loading import check_compute

    # before anything is loaded or written: batch_size 0 would make a whole part one batch
    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0), ("images_per_part", images_per_part, 1)):
        if value < least:
            raise InputError(None, f"{name}={value} is below its least value {least}", f"pass {name} >= {least}")
    check_compute(device, precision)
    units = plan_units(data, images_per_part)
    if text and any(not u.has_captions for u in units):
        raise InputError(None, "text=True needs captions, but folder and file sources have none", "embed shards, or drop --text")
    check_writable(out)  # before the model loads: a read-only --out fails in a second, not after minutes
    loaded = load_model(model, checkpoint, device=device, precision=precision)
    run = RunFolder(out, "embed", inputs={"data": [u.source for u in units], "model": loaded.identity},
                    parameters={"text": text, "images_per_part": images_per_part},
                    settings={"batch_size": batch_size, "workers": workers, "device": device},
                    reads=[*(s.path for s in resolve_data(data)), *map(Path, given_paths(data))], record=st.SIDECAR)
    finished = run.open(overwrite)
    if finished is not None:
        return finished
    out = run.out
    n_parts = len(units)
    done: dict[int, dict[str, Any]] = {}
    for u in units:
        record = st.read_part_record(out, u.index, n_parts)
        if record is not None:
            done[u.index] = record
    todo = [u for u in units if u.index not in done]

    prep = SplitPreprocess(loaded.preprocess)
    stream = _UnitStream(todo, prep, batch_size)
    n_loaders = min(workers, len(todo))
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=n_loaders,
                                         prefetch_factor=4 if n_loaders else None)
    pending: dict[int, dict[str, list]] = {}
    n_images = 0
    with Timer() as timer, progress("embed", total=n_parts, unit="parts") as advance, torch.inference_mode():
        advance(len(done))
        for item in loader if todo else []:
            if "error" in item:
                item["error"].reraise()
            acc = pending.setdefault(item["unit"], {"img": [], "text": [], "keys": [], "captions": [], "meta": []})
            if item.get("done"):
                record = _write_unit(out, units[item["unit"]], n_parts, acc, item, text, loaded.identity["embed_dim"])
                done[item["unit"]] = record
                n_images += record["rows"]
                del pending[item["unit"]]
                advance()
                continue
            x = prep.normalise(item["images"]).to(device=loaded.device, dtype=loaded.dtype)
            acc["img"].append(loaded.model.encode_image(x).float().cpu().numpy())
            if text:
                acc["text"].append(_encode_captions(loaded, item["captions"], dim=loaded.identity["embed_dim"]))
            acc["keys"].extend(item["keys"])
            acc["captions"].extend(item["captions"])
            acc["meta"].extend(item["meta"])
    records = [done[u.index] for u in units]
    dups = find_duplicate_keys(st.EmbeddingStore(out, unfinished=False))
    if dups:
        raise InputError(
            out,
            f"{len(dups)} keys occur more than once across sources (e.g. {list(dups)[:3]})",
            "keys must be unique in a store: embed sources with overlapping keys into separate stores",
        )
    skipped = [s for r in records for s in r["skipped"]]
    truncated = [{"source": r["source"], **r["truncated"]} for r in records if r.get("truncated")]
    missing_text = [{"key": k, "source": r["source"]} for r in records for k in r.get("missing_text", [])]
    sidecar = st.write_sidecar(
        out,
        model=loaded.identity,
        records=records,
        source=[str(s) for s in data],
        text=text,
        skipped=skipped,
        truncated_shards=truncated,
        missing_text=missing_text,
        parameters={"batch_size": batch_size, "images_per_part": images_per_part, "device": device},
    )
    run.release()  # the sidecar is embed's completion record
    rate = n_images / timer.seconds if timer.seconds > 0 else 0.0
    summary(
        f"embed: {sidecar['count']} rows in {n_parts} parts ({len(units) - len(todo)} resumed), "
        f"{n_images} new images in {timer.seconds:.1f} s ({rate:.0f} img/s), "
        f"{len(skipped)} skipped, {len(truncated)} truncated shards"
        + (f", {len(missing_text)} without caption (no text embedding)" if text else "")
        + f" -> {out}"
    )
    for t in truncated:
        log.warning("truncated shard: %s", t["error"])
    return sidecar


def _encode_captions(loaded: Any, captions: Sequence[str | None], *, dim: int) -> np.ndarray:
    """float32 [len(captions), dim]: the text embeddings of the captions, the all-zero marker row
    for a missing (None) one."""
    out = np.zeros((len(captions), dim), np.float32)
    present = [i for i, c in enumerate(captions) if c is not None]
    if present:
        tokens = loaded.tokenizer([captions[i] for i in present]).to(loaded.device)
        out[present] = loaded.model.encode_text(tokens).float().cpu().numpy()
    return out


def _write_unit(out: Path, unit: Unit, n_parts: int, acc: dict[str, list], end: dict[str, Any], with_text: bool,
                dim: int) -> dict[str, Any]:
    import pyarrow as pa

    image = np.concatenate(acc["img"]) if acc["img"] else np.zeros((0, dim), np.float32)
    text = (np.concatenate(acc["text"]) if acc["text"] else np.zeros((0, dim), np.float32)) if with_text else None
    columns: dict[str, list] = {st.DEFAULT_KEY_COLUMN: acc["keys"]}
    if unit.has_captions:
        columns["caption"] = acc["captions"]
    for name in sorted({k for m in acc["meta"] for k in m}):
        columns[name] = [m.get(name) for m in acc["meta"]]
    record = {
        "source": unit.source,
        "skipped": end["skipped"],
        "truncated": end["truncated"],
        "text": with_text,
        "missing_text": [k for k, c in zip(acc["keys"], acc["captions"]) if c is None] if with_text else [],
    }
    return st.write_part(out, unit.index, n_parts, image=image, text=text, metadata=pa.table(columns), record=record)
