"""``oodlab evaluate``: zero-shot classification of one checkpoint, or a run's checkpoints as curves.

Outputs under ``OUT``::

    datasets/{name}.json                     spec, path, count, label space (index, name, id)
    {checkpoint}/{name}/predictions.parquet  key, label, prediction, correct, top5, top5_score
    {checkpoint}/{name}/logits.npy           float16 [n, n_classes] cosine logits (save_logits only)
    {checkpoint}/{name}/metrics.json         the pair's metrics; written last: marks the pair done
    clip_benchmark/{name}_{checkpoint}_{model}_en_zeroshot_classification.json
                                             CLIP_benchmark's record (acc1, acc5, mean_per_class_recall);
                                             the folder holds nothing else, so
                                             ``clip_benchmark build OUT/clip_benchmark`` reads it
    curves.csv                               checkpoint, epoch, dataset, n, acc1, acc5, mean_per_class_recall
    results.json                             per eval set and metric, the values over the checkpoints
    run.json, manifest.json                  the run folder's records (oodlab.utils.runs)

``{checkpoint}`` is the weights file's stem (``epoch_3``). The folder follows every stage's re-run
semantics (:mod:`oodlab.utils.runs`: inputs are the checkpoints' sha256 and the eval sets'
fingerprints); within an interrupted run each (checkpoint, eval set) pair is a shard task, kept
once its ``metrics.json`` exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.evaluation.datasets import EvalDataset, load_dataset
from oodlab.evaluation.images import BatchSource
from oodlab.evaluation.metrics import TASK, classification_metrics, clip_benchmark_record
from oodlab.evaluation.zeroshot import ClassPrototypes, classify
from oodlab.models.checkpoints import Checkpoint, resolve_checkpoints
from oodlab.utils.atomic import atomic_open, read_json, write_json, write_parquet
from oodlab.utils.errors import InputError
from oodlab.utils.hashing import sha256_file
from oodlab.utils.names import check_names
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder

log = logging.getLogger(__name__)

TOP_K = 5
METRICS = ("acc1", "acc5", "mean_per_class_recall")
PAIR_DONE = "metrics.json"
RESULTS_NAME = "results.json"
CLIP_BENCHMARK_DIR = "clip_benchmark"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(ds: EvalDataset) -> dict[str, Any]:
    """What the results of a dataset depend on: spec, label space, prompts, images and labels."""
    return {
        "spec": ds.spec.name,
        "count": len(ds.samples),
        "classes": _digest([ds.classes.names, ds.classes.ids]),
        "templates": _digest(list(ds.templates)),
        "samples": _digest([[s.key, s.label] for s in ds.samples]),
    }


def _checkpoint_fingerprint(ckpt: Checkpoint) -> dict[str, Any]:
    """A checkpoint's label, path and the sha256 of its weights (every file of an open_clip
    model folder)."""
    files = sorted(p for p in ckpt.path.iterdir() if p.is_file()) if ckpt.path.is_dir() else [ckpt.path]
    return {"label": ckpt.label, "epoch": ckpt.epoch, "path": str(ckpt.path),
            "sha256": {p.name: sha256_file(p) for p in files}}


def clip_benchmark_name(dataset: str, checkpoint: str, model: str) -> str:
    """The record's file name in ``clip_benchmark/``: CLIP_benchmark's own output template
    ``{dataset}_{pretrained}_{model}_{language}_{task}.json``, the checkpoint as ``pretrained``."""
    return f"{dataset}_{checkpoint}_{model}_en_{TASK}.json"


def _write_pair(out: Path, ds: EvalDataset, ckpt: Checkpoint, model: str, labels: np.ndarray,
                topk: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    import pyarrow as pa

    folder = out / ckpt.label / ds.name
    metrics = classification_metrics(labels, topk, len(ds.classes))
    table = pa.table({
        "key": pa.array([s.key for s in ds.samples], pa.string()),
        "label": pa.array(labels.astype(np.int32)),
        "prediction": pa.array(topk[:, 0].astype(np.int32)),
        "correct": pa.array(topk[:, 0] == labels),
        "top5": pa.array(list(topk.astype(np.int32)), pa.list_(pa.int32())),
        "top5_score": pa.array(list(scores.astype(np.float32)), pa.list_(pa.float32())),
    })
    write_parquet(folder / "predictions.parquet", table)
    write_json(out / CLIP_BENCHMARK_DIR / clip_benchmark_name(ds.name, ckpt.label, model),
               clip_benchmark_record(ds.name, model, str(ckpt.path), metrics))
    record = {"checkpoint": ckpt.label, "epoch": ckpt.epoch, "eval_set": ds.name, "count": len(labels),
              "metrics": metrics}
    write_json(folder / PAIR_DONE, record)
    return record


def _evaluate_pair(loaded: Any, ds: EvalDataset, source: BatchSource, prototypes: Any, folder: Path,
                   save_logits: bool, advance: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify every image of ``ds``; returns labels [n], top-k [n, k], their scores [n, k]."""
    topk, scores = [], []
    with contextlib.ExitStack() as stack:
        logits_file = stack.enter_context(atomic_open(folder / "logits.npy", "wb")) if save_logits else None
        if logits_file is not None:  # streamed: memory holds one batch of logits
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                      "shape": (len(ds.samples), len(ds.classes))}
            np.lib.format.write_array_header_1_0(logits_file, header)
        for t, s, logits in classify(loaded.model, source.batches(loaded.device, loaded.dtype), prototypes, k=TOP_K):
            topk.append(t.numpy())
            scores.append(s.numpy())
            if logits_file is not None:
                logits_file.write(np.ascontiguousarray(logits.numpy().astype(np.float16)).tobytes())
            advance(len(t))
    labels = np.array([s.label for s in ds.samples], dtype=np.int64)
    return labels, np.concatenate(topk), np.concatenate(scores)


def _write_curves(out: Path, checkpoints: list[Checkpoint], datasets: list[EvalDataset],
                  records: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    rows = []
    curves: dict[str, dict[str, list]] = {}
    for ds in datasets:
        curves[ds.name] = {m: [] for m in METRICS}
        for ckpt in checkpoints:
            rec = records[(ckpt.label, ds.name)]
            rows.append([ckpt.label, "" if ckpt.epoch is None else ckpt.epoch, ds.name, rec["count"],
                         *("" if rec["metrics"][m] is None else f"{rec['metrics'][m]:.6f}" for m in METRICS)])
            for m in METRICS:
                curves[ds.name][m].append(rec["metrics"][m])
    with atomic_open(out / "curves.csv", "w", encoding="utf-8", newline="") as f:
        f.write(",".join(["checkpoint", "epoch", "dataset", "n", *METRICS]) + "\n")
        for r in rows:
            f.write(",".join(map(str, r)) + "\n")
    results = {
        "checkpoints": [{"label": c.label, "epoch": c.epoch, "path": str(c.path)} for c in checkpoints],
        "datasets": {ds.name: {"spec": ds.spec.name, "count": len(ds.samples), "n_classes": len(ds.classes),
                               "metrics": curves[ds.name]} for ds in datasets},
    }
    write_json(out / RESULTS_NAME, results)
    return results


def evaluate(
    checkpoint: str | Path,
    eval_data: Mapping[str, str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    specs: Mapping[str, str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 1,
    cache_mb: int = 1024,
    save_logits: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Zero-shot top-1/top-5/mean-per-class-recall of ``checkpoint`` on the eval sets ``eval_data``.

    Args:
        checkpoint: a weights file, an open_clip model folder, or an ``oodlab train`` run folder
            (all its ``epoch_{n}.pt``, evaluated as curves starting at the untrained epoch 0).
        eval_data: eval set name -> dataset path. The name selects the spec (``imagenet-val``,
            ``imagenet-v2``, ``imagenet-r``, ``domainnet-sketch-clean``, ...) unless ``specs``
            names one; paths inside a synthetic world get the world's spec automatically.
        out: output folder (completed (checkpoint, eval set) pairs are kept: resume).
        model: open_clip architecture or oodlab tiny config the checkpoint was trained as.
        specs: eval set name -> spec name (or ``world``) for sets not named after their spec.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (GPU).
        batch_size: images per forward pass.
        workers: DataLoader processes decoding images (0: in the main process).
        cache_mb: decoded images kept in memory across checkpoints, in MiB (0: decode every time).
        save_logits: also save each pair's cosine logits as float16 ``logits.npy`` [n, n_classes].
        overwrite: delete ``out`` first instead of resuming.

    Returns:
        ``results.json``: per eval set and metric the values over the checkpoints (in [0, 1]).

    Raises:
        InputError: bad paths, names or specs; IncompatibleError: a checkpoint that does not
        match ``model`` (never loaded with strict=False) or ``out`` holding another evaluation.
    """
    from oodlab.models import load_model
    from oodlab.models.loading import check_compute

    check_compute(device, precision)
    out = Path(out)
    specs = dict(specs or {})
    if not eval_data:
        raise InputError(None, "no eval set given", "pass --eval-data NAME=PATH at least once")
    check_names(eval_data, "eval set name")
    extra = sorted(set(specs) - set(eval_data))
    if extra:
        raise InputError(None, f"--spec names {extra}, which are not eval sets", "use the names given to --eval-data")
    if batch_size < 1 or workers < 0 or cache_mb < 0:
        raise InputError(None, "batch_size must be >= 1, workers and cache_mb >= 0", None)
    checkpoints = resolve_checkpoints(checkpoint)
    check_names([c.label for c in checkpoints], "checkpoint name")
    loaded_sets = [load_dataset(name, path, specs.get(name)) for name, path in eval_data.items()]
    ds_prints = {ds.name: dataset_fingerprint(ds) for ds in loaded_sets}
    folder = RunFolder(
        out, "evaluate",
        inputs={"checkpoints": [_checkpoint_fingerprint(c) for c in checkpoints],
                "eval_data": {ds.name: {"path": str(ds.root), **ds_prints[ds.name]} for ds in loaded_sets}},
        parameters={"model": model, "specs": {ds.name: ds.spec.name for ds in loaded_sets}, "device": device,
                    "precision": precision, "top_k": TOP_K, "save_logits": save_logits},
        settings={"batch_size": batch_size, "workers": workers, "cache_mb": cache_mb},
        reads=[Path(checkpoint), *(ds.root for ds in loaded_sets)])
    finished = folder.open(overwrite)
    if finished is not None:
        summary(f"evaluate: {out} is complete already")
        return read_json(out / RESULTS_NAME)

    records: dict[tuple[str, str], dict[str, Any]] = {}
    sources: dict[str, BatchSource] = {}
    budget = cache_mb << 20  # bytes of decoded images still allowed in memory
    n_images = sum(len(ds.samples) for ds in loaded_sets)
    resumed = 0
    identity: dict[str, Any] = {}
    with Timer() as timer, progress("evaluate", total=n_images * len(checkpoints), unit="images") as advance:
        for ckpt in checkpoints:
            todo = []
            for ds in loaded_sets:
                done = out / ckpt.label / ds.name / PAIR_DONE
                if done.is_file():  # a shard task of this run finished before an interruption
                    records[(ckpt.label, ds.name)] = read_json(done)
                    resumed += 1
                    advance(len(ds.samples))
                else:
                    todo.append(ds)
            if not todo:
                continue
            loaded = load_model(model, ckpt.path, device=device, precision=precision)
            identity = {k: v for k, v in loaded.identity.items() if k != "weights"}
            prototypes = ClassPrototypes(loaded.model, loaded.tokenizer)
            for ds in todo:
                new_source = ds.name not in sources
                if new_source:
                    sources[ds.name] = BatchSource([s.path for s in ds.samples], loaded.preprocess,
                                                   batch_size=batch_size, workers=workers, cache_bytes=budget)
                labels, topk, scores = _evaluate_pair(loaded, ds, sources[ds.name],
                                                      prototypes(ds.classes.names, ds.templates),
                                                      out / ckpt.label / ds.name, save_logits, advance)
                if new_source:  # its first decode filled its cache (or did not, when too large)
                    budget = max(0, budget - sources[ds.name].cached_bytes)
                records[(ckpt.label, ds.name)] = _write_pair(out, ds, ckpt, model, labels, topk, scores)
            del loaded
    for ds in loaded_sets:
        write_json(out / "datasets" / f"{ds.name}.json", ds.describe())
    results = _write_curves(out, checkpoints, loaded_sets, records)
    folder.finish(
        model={"architecture": model, "precision": precision, **identity},
        counts={"checkpoints": len(checkpoints), "eval_sets": len(loaded_sets), "images": n_images,
                "pairs": len(records)},
        outputs={"curves": "curves.csv", "results": RESULTS_NAME, "clip_benchmark": f"{CLIP_BENCHMARK_DIR}/"},
    )
    last = checkpoints[-1].label
    accs = ", ".join(f"{ds.name} {100 * records[(last, ds.name)]['metrics']['acc1']:.1f}%" for ds in loaded_sets)
    summary(f"evaluate: {len(checkpoints)} checkpoints x {len(loaded_sets)} eval sets ({resumed} pairs resumed) "
            f"in {timer.seconds:.1f} s; {last} top-1: {accs} -> {out}")
    return results
