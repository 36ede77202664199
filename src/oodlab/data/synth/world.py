"""Generate a synthetic world: a web-like pool, ImageNet-like train and eval sets, and DomainNet.

The world is written into a hidden temporary sibling of the output folder and renamed into
place at the end, so a killed run never leaves anything that looks like a complete world; for
that reason the image files inside are written directly, not one by one through temporaries.

Work is split into tasks (a pool shard, or a chunk of a folder dataset) whose output depends only
on the plan and the task; worker processes run them and the results are consumed in task order,
so the files are byte-identical for any number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from oodlab.data.shard_writer import ShardWriter
from oodlab.data.synth.captions import (
    ALT_TEXT_TEMPLATES,
    DOMAIN_TERMS,
    DROP_PERIOD,
    GENERIC_TERMS,
    ICML_TEMPLATES,
    NOISE,
)
from oodlab.data.synth.classes import CLASSES
from oodlab.data.synth.config import PRESETS, WorldConfig
from oodlab.data.synth.contact_sheet import write_contact_sheet
from oodlab.data.synth.domains import AMBIGUOUS_DOMAINS, DOMAIN_NAMES, DOMAINS, encode_jpeg, render, style_of
from oodlab.data.synth.plan import (
    DOMAINNET,
    EVAL_SETS,
    IMAGENET_TRAIN,
    POOL,
    WORLD_JSON,
    WorldPlan,
    build_plan,
    eval_dataset,
    wnid,
)
from oodlab.utils.atomic import atomic_path, read_json, write_json, write_text
from oodlab.utils.errors import InputError
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder

log = logging.getLogger(__name__)

#: Bumped whenever a change to the drawing or the layout changes the generated files.
GENERATOR_VERSION = "1"
GROUND_TRUTH = "ground_truth.parquet"
CONTACT_SHEET = "contact_sheet.png"

#: Columns of the pool's parquet files (and fields of each sample's json).
POOL_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("class_name", pa.string()),
    ("class_index", pa.int64()),
    ("wnid", pa.string()),
    ("domain", pa.string()),
    ("near_duplicate_dataset", pa.string()),
    ("near_duplicate_key", pa.string()),
    ("duplicate_group", pa.int64()),
    ("caption_names_class", pa.bool_()),
    ("caption_names_domain", pa.bool_()),
])


#: Columns of ground_truth.parquet: one row per image of every dataset.
GROUND_TRUTH_COLUMNS = (
    "dataset",
    "key",
    "class_name",
    "class_index",
    "domain",
    "style",
    "split",
    "near_duplicate_dataset",
    "near_duplicate_key",
    "duplicate_group",
)
_INTEGER_COLUMNS = ("class_index", "duplicate_group")


def _ground_truth_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c in _INTEGER_COLUMNS else pa.string()) for c in GROUND_TRUTH_COLUMNS])


def _ground_truth_row(**fields: Any) -> dict[str, Any]:
    """A ground-truth row from the fields given (others null; extra fields ignored); ``style`` is
    the domain's label in the domain study (natural / rendition / ambiguous)."""
    fields["style"] = style_of(fields["domain"])
    return {c: fields.get(c) for c in GROUND_TRUTH_COLUMNS}


@dataclass(frozen=True)
class Task:
    """Images ``start`` to ``stop`` (exclusive) of ``dataset``; a pool task is exactly one shard."""

    dataset: str
    start: int
    stop: int


def _tasks(plan: WorldPlan) -> list[Task]:
    cfg = plan.config
    # the pool's shards are the largest tasks: first, so that the workers finish together
    tasks = [Task(POOL, s, min(s + cfg.pool_shard_size, cfg.pool_size))
             for s in range(0, cfg.pool_size, cfg.pool_shard_size)]
    for name, layout in plan.layouts.items():
        tasks += [Task(name, s, min(s + cfg.chunk_size, len(layout))) for s in range(0, len(layout), cfg.chunk_size)]
    return tasks


def _write_pool_shard(plan: WorldPlan, root: Path, task: Task) -> list[dict[str, Any]]:
    cfg = plan.config
    class_index = {n: i for i, n in enumerate(plan.class_names)}
    rows = []
    with ShardWriter(root / POOL, f"{task.start // cfg.pool_shard_size:05d}", schema=POOL_SCHEMA) as writer:
        for i in range(task.start, task.stop):
            s = plan.pool_sample(i)
            copy = s.copy
            # pool-internal copies are told by their duplicate group alone
            source = None if copy is None or copy.source_dataset == POOL else (
                plan.layouts[copy.source_dataset].item(copy.source_index))
            record = {
                "key": s.key,
                "caption": s.caption.text,
                "status": "success",
                "width": cfg.image_size,
                "height": cfg.image_size,
                "class_name": s.spec.class_name,
                "class_index": class_index[s.spec.class_name],
                "wnid": wnid(class_index[s.spec.class_name]),
                "domain": s.spec.domain,
                "near_duplicate_dataset": None if source is None else source.dataset,
                "near_duplicate_key": None if source is None else source.key,
                "duplicate_group": plan.group_of(POOL, i),
                "caption_names_class": s.caption.names_class,
                "caption_names_domain": s.caption.names_domain,
            }
            members = {
                "jpg": encode_jpeg(render(s.spec, cfg.image_size), s.spec.quality),
                "txt": s.caption.text.encode("utf-8"),
                "json": json.dumps(record, indent=4).encode("utf-8"),
            }
            writer.write(s.key, members, record)
            rows.append(_ground_truth_row(dataset=POOL, **record))
    return rows


def _write_folder_chunk(plan: WorldPlan, root: Path, task: Task) -> list[dict[str, Any]]:
    layout = plan.layouts[task.dataset]
    made: set[Path] = set()
    rows = []
    for i in range(task.start, task.stop):
        item = layout.item(i)
        spec = plan.spec(task.dataset, i)
        path = root / task.dataset / item.key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(encode_jpeg(render(spec, plan.config.image_size), spec.quality))
        rows.append(_ground_truth_row(dataset=task.dataset, key=item.key, class_name=spec.class_name,
                                      class_index=item.class_index, domain=spec.domain, split=item.split,
                                      duplicate_group=plan.group_of(task.dataset, i)))
    return rows


def _run_task(plan: WorldPlan, root: Path, task: Task) -> list[dict[str, Any]]:
    """Write one task's images; return its ground-truth rows in index order."""
    write = _write_pool_shard if task.dataset == POOL else _write_folder_chunk
    return write(plan, root, task)


_worker_state: tuple[WorldPlan, Path] | None = None


def _init_worker(plan: WorldPlan, root: Path) -> None:
    global _worker_state
    _worker_state = (plan, root)


def _run_in_worker(task: Task) -> list[dict[str, Any]]:
    assert _worker_state is not None, "worker not initialised"
    return _run_task(*_worker_state, task)


def _results(plan: WorldPlan, root: Path, tasks: list[Task], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Each task's rows, in task order."""
    if workers == 0:
        for task in tasks:
            yield _run_task(plan, root, task)
        return
    # spawn: children never inherit the parent's threads or locks (torch, the progress bar)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(plan, root)) as pool:
        yield from pool.imap(_run_in_worker, tasks)


def _configure(preset: str, rendition_share: float | None, duplicate_share: float | None) -> WorldConfig:
    if preset not in PRESETS:
        raise InputError(None, f"unknown preset {preset!r}", f"choose one of: {', '.join(PRESETS)}")
    config = PRESETS[preset]
    if rendition_share is not None:
        if not 0.0 <= rendition_share <= 1.0:
            raise InputError(None, f"rendition_share={rendition_share} is not in [0, 1]", "pass a fraction")
        config = replace(config, rendition_share=float(rendition_share))
    if duplicate_share is not None:
        if not 0.0 <= duplicate_share <= 0.5:
            raise InputError(None, f"duplicate_share={duplicate_share} is not in [0, 0.5]",
                             "pass a small fraction such as 0.03")
        config = replace(config, duplicate_share=float(duplicate_share))
    return config


def _world_json(plan: WorldPlan, counts: Counter, pool_domains: Counter) -> dict[str, Any]:
    cfg = plan.config
    eval_copies = Counter(c.source_dataset for c in plan.pool_copies.values() if c.source_dataset != POOL)
    pool_groups = sum(1 for (d, _) in plan.groups if d == POOL)
    datasets: dict[str, Any] = {POOL: {"path": POOL, "count": counts[POOL], "format": "webdataset (img2dataset)"}}
    for name, layout in plan.layouts.items():
        datasets[name] = {"path": name, "count": counts[name], **layout.describe()}
    for name, ev in EVAL_SETS.items():
        datasets[eval_dataset(name)]["mirrors"] = ev.mirrors
    datasets[IMAGENET_TRAIN]["mirrors"] = "ImageNet train: curated photos"
    n_shards = -(-cfg.pool_size // cfg.pool_shard_size)
    return {
        "preset": cfg.name,
        "seed": plan.seed,
        "generator_version": GENERATOR_VERSION,
        "image_size": cfg.image_size,
        "config": asdict(cfg),
        "classes": [
            {"index": i, "name": n, "wnid": wnid(i), "folder": folder, "parts": CLASSES[n].parts}
            for i, (n, folder) in enumerate(zip(plan.class_names, plan.layouts[DOMAINNET].class_folders))
        ],
        "domains": [
            {"name": d, "caption_terms": list(DOMAIN_TERMS[d]), "style": DOMAINS[d].__doc__.splitlines()[0]}
            for d in DOMAIN_NAMES
        ],
        "captions": {
            "icml2025_templates": list(ICML_TEMPLATES),
            "alt_text_templates": list(ALT_TEXT_TEMPLATES),
            "generic_terms": list(GENERIC_TERMS),
            "term_choice": "uniform over generic + domain terms",
            "drop_final_period": DROP_PERIOD,
            "noisy_share": cfg.noisy_caption_share,
            "noise_kinds": list(NOISE),
        },
        "datasets": datasets,
        "pool": {
            "shards": [f"{s:05d}.tar" for s in range(n_shards)],
            "shard_size": cfg.pool_shard_size,
            "count": counts[POOL],
            "domains": {d: pool_domains[d] for d in (*DOMAIN_NAMES, *AMBIGUOUS_DOMAINS)},
            "ambiguous_share": cfg.ambiguous_share,
            "eval_opposite_share": cfg.eval_opposite_share,
            "rendition_share": cfg.rendition_share,
        },
        "duplicates": {
            "planted_copies": len(plan.pool_copies),
            "eval_copies": sum(eval_copies.values()),
            "eval_sources": len(plan.groups) - pool_groups,
            "eval_copies_by_dataset": {eval_dataset(n): eval_copies[eval_dataset(n)] for n in EVAL_SETS},
            "pool_copies": len(plan.pool_copies) - sum(eval_copies.values()),
            "pool_groups": pool_groups,
        },
        "ground_truth": GROUND_TRUTH,
        "contact_sheet": CONTACT_SHEET,
    }


def _generate(plan: WorldPlan, root: Path, workers: int) -> tuple[Counter, Counter]:
    """Write all images and the ground truth; return image counts per dataset and pool domain."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = _tasks(plan)
    counts: Counter = Counter()
    pool_domains: Counter = Counter()
    schema = _ground_truth_schema()
    total = sum(t.stop - t.start for t in tasks)
    with atomic_path(root / GROUND_TRUTH) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        with progress(f"synth world {plan.config.name}", total, "images") as advance:
            for rows in _results(plan, root, tasks, workers):
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                for r in rows:
                    counts[r["dataset"]] += 1
                    if r["dataset"] == POOL:
                        pool_domains[r["domain"]] += 1
                advance(len(rows))
    return counts, pool_domains


def synth(
    out: str | Path,
    *,
    preset: str = "laion",
    seed: int = 0,
    workers: int = 1,
    rendition_share: float | None = None,
    duplicate_share: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate the synthetic world: pool shards, ImageNet-like train/eval folders, DomainNet.

    Layout under ``out``: ``pool/`` (webdataset shards ``{00000..}.tar`` with ``KEY.jpg``,
    ``KEY.txt``, ``KEY.json``, one parquet and ``_stats.json`` per shard), ``imagenet-train/``
    and ``eval/{val,v2,sketch,r,a,objectnet}/`` (ImageFolder, wnid folders), ``domainnet/``
    (``{domain}/{class}/{file}.jpg`` with ``{domain}_{train,test}.txt``), ``ground_truth.parquet``
    (one row per image of every dataset), ``world.json``, ``contact_sheet.png``, ``run.json`` and
    ``manifest.json`` (written last). Images are square RGB JPEGs of the preset's ``image_size`` px.

    The files are byte-identical for the same preset, seed and overrides, whatever ``workers``.
    Workers are spawned processes: a script that calls this with ``workers`` >= 1 needs the usual
    ``if __name__ == "__main__":`` guard. A killed run re-run writes the world again.

    Args:
        out: the world folder.
        preset: a key of :data:`PRESETS` (laion: LAION-like, the demo's; default: high
            contamination; small; tiny: tests). See docs/world.md.
        seed: the world's seed; the same seed gives byte-identical files.
        workers: processes drawing images (0: all in this process).
        rendition_share: fraction of non-``real`` pool images, in [0, 1] (None: the preset's).
        duplicate_share: planted near-duplicate copies as a fraction of the pool, in [0, 0.5] (None: the preset's).
        overwrite: start afresh instead of resuming (see :mod:`oodlab.utils.runs`).

    Returns:
        The ``world.json`` dict.

    Raises:
        InputError: unknown preset, an override out of range, bad ``workers``, or ``out`` holds
            something else.
    """
    config = _configure(preset, rendition_share, duplicate_share)
    if not isinstance(workers, int) or workers < 0:
        raise InputError(None, f"workers={workers!r} is not an integer >= 0", "pass workers >= 0")
    run = RunFolder(out, "synth", inputs={},
                    parameters={"preset": preset, "seed": seed, "rendition_share": config.rendition_share,
                                "duplicate_share": config.duplicate_share}, settings={"workers": workers})
    if run.open(overwrite) is not None:
        return read_json(run.out / WORLD_JSON)
    root = run.out
    plan = build_plan(config, seed)
    with Timer() as timer:
        counts, pool_domains = _generate(plan, root, workers)
        domainnet = plan.layouts[DOMAINNET]
        for domain in DOMAIN_NAMES:
            for split in ("train", "test"):
                write_text(root / DOMAINNET / f"{domain}_{split}.txt",
                           "".join(f"{line}\n" for line in domainnet.list_lines(domain, split)))
        world = _world_json(plan, counts, pool_domains)
        write_json(root / WORLD_JSON, world)
        write_contact_sheet(root, plan, root / CONTACT_SHEET)
        run.finish(counts=dict(counts), outputs={"world": WORLD_JSON, "ground_truth": GROUND_TRUTH,
                                                  "contact_sheet": CONTACT_SHEET})
    parts = ", ".join(f"{name} {n}" for name, n in counts.items())
    summary(f"synth world '{preset}' (seed {seed}): {sum(counts.values())} images ({parts}), "
            f"{len(plan.pool_copies)} planted near-duplicates, {timer.seconds:.1f} s -> {root}")
    return world
