"""``oodlab eval``: zero-shot classification of one checkpoint, or a run's checkpoints as curves.

Outputs under ``OUT``::

    datasets/{name}.json                     spec, path, count, label space (index, name, id)
    {checkpoint}/{name}/predictions.parquet  key, label, prediction, correct, top5, top5_score
    {checkpoint}/{name}/clip_benchmark.json  CLIP_benchmark's record (acc1, acc5, mean_per_class_recall)
    {checkpoint}/{name}/logits.npy           float16 [n, n_classes] cosine logits (save_logits only)
    {checkpoint}/{name}/metrics.json         metrics + fingerprint; written last: marks the pair done
    curves.csv                               checkpoint, epoch, dataset, n, acc1, acc5, mean_per_class_recall
    results.json                             per dataset and metric, the values over the checkpoints
    manifest.json

``{checkpoint}`` is the weights file's stem (``epoch_3``). A (checkpoint, dataset) pair whose
``metrics.json`` matches the model, weights, dataset and settings is skipped, so an interrupted
evaluation resumes; one that does not match is an error (``overwrite=True`` starts afresh).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from oodlab.evaluation.datasets import EvalDataset, load_dataset
from oodlab.evaluation.images import BatchSource
from oodlab.evaluation.metrics import classification_metrics, clip_benchmark_record
from oodlab.evaluation.zeroshot import ClassPrototypes, classify
from oodlab.models.checkpoints import Checkpoint, resolve_checkpoints
from oodlab.utils.atomic import atomic_open, read_json, remove_stale_temporaries, write_json, write_parquet
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.manifest import write_manifest
from oodlab.utils.progress import Timer, progress, summary

log = logging.getLogger(__name__)

TOP_K = 5
METRICS = ("acc1", "acc5", "mean_per_class_recall")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _model_fingerprint(identity: dict[str, Any]) -> dict[str, Any]:
    weights = {k: v for k, v in identity["weights"].items() if k != "file"}
    return {"architecture": identity["architecture"], "weights": weights,
            "preprocess": identity["preprocess"], "precision": identity["precision"]}


def _check_names(datasets: Mapping[str, Any], checkpoints: list[Checkpoint]) -> None:
    for name in datasets:
        if not _NAME.match(name):
            raise InputError(None, f"dataset name {name!r} is not a plain file name",
                             "use letters, digits, '.', '_' and '-' (it names output folders)")
    labels = [c.label for c in checkpoints]
    if len(set(labels)) != len(labels) or not all(_NAME.match(lbl) for lbl in labels):
        raise InputError(None, f"checkpoint names {labels} are not distinct plain file names",
                         "evaluate such checkpoints into separate --out folders")


def _done(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of a completed pair, None if not done; an error if done with other inputs."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise IncompatibleError(
            path,
            "was computed with another model, checkpoint, dataset or settings",
            "choose a new --out, or pass --overwrite to replace the results",
        )
    return record


def _write_pair(folder: Path, ds: EvalDataset, ckpt: Checkpoint, model: str, labels: np.ndarray,
                topk: np.ndarray, scores: np.ndarray, fingerprint: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa

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
    write_json(folder / "clip_benchmark.json", clip_benchmark_record(ds.name, model, str(ckpt.path), metrics))
    record = {"checkpoint": ckpt.label, "epoch": ckpt.epoch, "dataset": ds.name, "count": len(labels),
              "metrics": metrics, "fingerprint": fingerprint}
    write_json(folder / "metrics.json", record)
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
    write_json(out / "results.json", results)
    return results


def evaluate(
    model: str,
    checkpoint: str | Path,
    datasets: Mapping[str, str | Path],
    out: str | Path,
    *,
    specs: Mapping[str, str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
    workers: int = 1,
    cache_mb: int = 1024,
    save_logits: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Zero-shot top-1/top-5/mean-per-class-recall of ``checkpoint`` on ``datasets``.

    Args:
        model: open_clip architecture or oodlab tiny config the checkpoint was trained as.
        checkpoint: a weights file, or an ``oodlab train`` run folder (all its ``epoch_{n}.pt``,
            evaluated as curves starting at the untrained epoch 0).
        datasets: result name -> dataset path. The name selects the spec (``imagenet-val``,
            ``imagenet-v2``, ``imagenet-r``, ``domainnet-sketch-clean``, ...) unless ``specs``
            names one; paths inside a synthetic world get the world's spec automatically.
        out: output folder (completed pairs are kept: resume).
        specs: result name -> spec name (or ``world``) for datasets not named after their spec.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (GPU).
        batch_size: images per forward pass.
        workers: DataLoader processes decoding images.
        cache_mb: decoded images kept in memory across checkpoints, in MiB (0: decode every time).
        save_logits: also save each pair's cosine logits as float16 ``logits.npy`` [n, n_classes].
        overwrite: delete ``out`` first instead of resuming.

    Returns:
        ``results.json``: per dataset and metric the values over the checkpoints (in [0, 1]).

    Raises:
        InputError: bad paths, names or specs; IncompatibleError: a checkpoint that does not
        match ``model`` (never loaded with strict=False) or results from other inputs in ``out``.
    """
    from oodlab.models import load_model

    out = Path(out)
    specs = dict(specs or {})
    if not datasets:
        raise InputError(None, "no dataset given", "pass --dataset NAME=PATH at least once")
    extra = sorted(set(specs) - set(datasets))
    if extra:
        raise InputError(None, f"--spec names {extra}, which are not datasets", "use the names given to --dataset")
    if batch_size < 1 or workers < 0 or cache_mb < 0:
        raise InputError(None, "batch_size must be >= 1, workers and cache_mb >= 0", None)
    checkpoints = resolve_checkpoints(checkpoint)
    _check_names(datasets, checkpoints)
    if overwrite and out.exists():
        shutil.rmtree(out)
    remove_stale_temporaries(out)
    loaded_sets = [load_dataset(name, path, specs.get(name)) for name, path in datasets.items()]
    ds_prints = {ds.name: dataset_fingerprint(ds) for ds in loaded_sets}
    params = {"device": device, "precision": precision, "top_k": TOP_K, "save_logits": save_logits}

    records: dict[tuple[str, str], dict[str, Any]] = {}
    sources: dict[str, BatchSource] = {}
    budget = cache_mb << 20  # bytes of decoded images still allowed in memory
    n_images = sum(len(ds.samples) for ds in loaded_sets)
    resumed = 0
    weights: dict[str, Any] = {}
    fp_model: dict[str, Any] = {}
    with Timer() as timer, progress("eval", total=n_images * len(checkpoints), unit="images") as advance:
        for ckpt in checkpoints:
            loaded = load_model(model, ckpt.path, device=device, precision=precision)
            fp_model = _model_fingerprint(loaded.identity)
            weights[ckpt.label] = fp_model.pop("weights")
            prototypes = ClassPrototypes(loaded.model, loaded.tokenizer)
            for ds in loaded_sets:
                folder = out / ckpt.label / ds.name
                fingerprint = {"model": {**fp_model, "weights": weights[ckpt.label]}, "dataset": ds_prints[ds.name],
                               "parameters": params}
                done = _done(folder, fingerprint)
                if done is not None:
                    records[(ckpt.label, ds.name)] = done
                    resumed += 1
                    advance(len(ds.samples))
                    continue
                new_source = ds.name not in sources
                if new_source:
                    sources[ds.name] = BatchSource([s.path for s in ds.samples], loaded.preprocess,
                                                   batch_size=batch_size, workers=workers, cache_bytes=budget)
                labels, topk, scores = _evaluate_pair(loaded, ds, sources[ds.name],
                                                      prototypes(ds.classes.names, ds.templates), folder,
                                                      save_logits, advance)
                if new_source:  # its first decode filled its cache (or did not, when too large)
                    budget = max(0, budget - sources[ds.name].cached_bytes)
                records[(ckpt.label, ds.name)] = _write_pair(folder, ds, ckpt, model, labels, topk, scores, fingerprint)
            del loaded
    for ds in loaded_sets:
        write_json(out / "datasets" / f"{ds.name}.json", ds.describe())
    results = _write_curves(out, checkpoints, loaded_sets, records)
    write_manifest(
        out,
        "evaluation.evaluate",
        inputs={"checkpoints": [{"label": c.label, "path": str(c.path), "weights": weights[c.label]}
                                for c in checkpoints],
                "datasets": {ds.name: {"path": str(ds.root), **ds_prints[ds.name]} for ds in loaded_sets}},
        parameters={"model": model, "specs": {ds.name: ds.spec.name for ds in loaded_sets}, **params},
        model=fp_model,
        counts={"checkpoints": len(checkpoints), "datasets": len(loaded_sets), "images": n_images,
                "pairs": len(records)},
        outputs={"curves": "curves.csv", "results": "results.json"},
    )
    last = checkpoints[-1].label
    accs = ", ".join(f"{ds.name} {100 * records[(last, ds.name)]['metrics']['acc1']:.1f}%" for ds in loaded_sets)
    summary(f"eval: {len(checkpoints)} checkpoints x {len(loaded_sets)} datasets ({resumed} pairs resumed) "
            f"in {timer.seconds:.1f} s; {last} top-1: {accs} -> {out}")
    return results
