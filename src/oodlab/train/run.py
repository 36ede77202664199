"""``oodlab train``: train CLIP on webdataset shards (open_clip's trainer, or the in-memory one for
small CPU runs), recorded and resumable.

Layout of a run folder ``RUN``::

    run.json                   what the run depends on (oodlab.utils.runs), written first
    config.json                the configuration (model, batch size, epochs, lr, warmup, wd,
                               precision, seed, samples seen, ...) and the data (shards, count,
                               the manifest of the stage that wrote them)
    checkpoints/epoch_0.pt     the untrained model (the trainer's own initialisation)
    checkpoints/epoch_{n}.pt   after epoch n (open_clip's format: epoch, name, state_dict, optimizer)
    out.log, params.txt        open_clip's log and its full argument list
    manifest.json              written when the run is complete

The trainer runs in a child process (``python -m oodlab.train.entry``, open_clip's trainer, or
``python -m oodlab.train.memory``, which decodes the data once and trains the same open_clip model
with the same loss, optimizer, schedule and checkpoints; ``trainer="auto"`` picks it for CPU runs
whose decoded images fit in 2 GiB), so a crash cannot take the caller down; its log (open_clip's
format from either) streams into a progress bar. The run folder follows every stage's
re-run semantics (:mod:`oodlab.utils.runs`): the same command on an unfinished run resumes from
its last complete checkpoint (weights, optimizer and schedule); on a finished run it does
nothing; a different configuration or data is an error; ``--overwrite`` starts afresh.
``oodlab train-commands`` prints the same run's torchrun and Slurm command lines
(:mod:`oodlab.train.launch`). A run is reproducible from its seed (initialisation and sample order, see
:mod:`oodlab.train.entry`) up to float rounding that depends on the thread count; a resumed run's
sample order after the resume differs from an uninterrupted one's.

On the default synthetic world, ``oodlab train --train-data WORLD/pool --out RUN`` takes about
a minute of one core and reaches 71-75% zero-shot top-1 on ``WORLD/eval/val`` (the settings and
how they were chosen are in :data:`oodlab.train.config.MODEL_DEFAULTS`; ``benchmarks/train.py``
measures it against the configuration before issue 11).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from oodlab.models.checkpoints import complete_checkpoint, epoch_checkpoints
from oodlab.models.loading import check_compute
from oodlab.train.config import TrainConfig
from oodlab.train.launch import single_command, train_config
from oodlab.utils.atomic import write_json
from oodlab.utils.errors import OodlabError
from oodlab.utils.progress import Timer, progress, summary
from oodlab.utils.runs import RunFolder

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
LOG_NAME = "out.log"
_STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")
_LOSS = re.compile(r" Loss: ([0-9.]+)")


class TrainingFailed(OodlabError):
    """open_clip's trainer exited with an error (its log names the cause)."""


def _finished(out: Path, epochs: int) -> bool:
    """Whether the run's last epoch was written completely."""
    done = [c for c in epoch_checkpoints(out) if c.epoch == epochs]
    return bool(done) and complete_checkpoint(str(done[0].path))


def _trainer_env(cfg: TrainConfig, threads: int | None) -> dict[str, str]:
    """The trainer's environment. On CPU, OpenMP threads sleep instead of spinning while they
    wait (``OMP_WAIT_POLICY=PASSIVE``, unless set): the data-loading worker shares the cores with
    them, and spinning threads starve it (about 10% faster on 2 cores). ``threads`` caps the
    compute threads (e.g. one each for two runs side by side)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cfg.device == "cpu":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _stream(cmd: list[str], cfg: TrainConfig, env: dict[str, str],
            start_epoch: int) -> tuple[int, list[str], float | None]:
    """Run the trainer, its log driving a progress bar; returns (exit status, its last lines,
    last logged loss)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    loss = None
    steps = cfg.steps_per_epoch()
    with progress(f"train {cfg.model}", total=steps * cfg.epochs, unit="steps") as advance:
        advance(start_epoch * steps)
        position = start_epoch * steps
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            m = _STEP.search(line)
            if m:
                epoch, seen = int(m.group(1)), int(m.group(2))
                now = epoch * steps + -(-seen // cfg.batch_size)
                if now > position:
                    advance(now - position)
                    position = now
                lm = _LOSS.search(line)
                loss = float(lm.group(1)) if lm else loss
            elif "Start epoch" in line or "resuming checkpoint" in line:
                log.info(line.split(" | ")[-1])
        status = proc.wait()
    return status, list(tail), loss


def train(
    train_data: Sequence[str | Path],
    out: str | Path,
    *,
    model: str = "tiny-vit",
    batch_size: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    wd: float | None = None,
    precision: str | None = None,
    lr_scheduler: str | None = None,
    epochs_cooldown: int | None = None,
    lr_cooldown_end: float | None = None,
    seed: int = 0,
    workers: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    extra_args: str = "",
    trainer: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on webdataset shards with open_clip's trainer, writing the run to ``out``.

    Args:
        train_data: shards: a folder of ``.tar`` (a pool, a subset written as shards), quoted
            brace patterns, globs or tar paths. Their sample count becomes ``--train-num-samples``.
        out: the run folder (``RUN/checkpoints/epoch_{n}.pt``); an unfinished run is resumed.
        model: open_clip architecture or oodlab tiny config (``tiny-vit`` with its defaults:
            about a minute of one core, 71-75% zero-shot top-1 on the default world's val set).
        batch_size: global contrastive batch (None: the model's default; tiny models 64, paper
            models 33,600).
        epochs: passes over the data (None: the model's default; tiny models about 60,000
            samples seen, i.e. 5 epochs of the default world's 12,000-sample pool and 20 of the
            small preset's 3,000, at most 40; paper models 32).
        lr: peak learning rate (None: model default); cosine decay after linear warmup.
        warmup: warmup steps (None: model default).
        wd: AdamW weight decay (None: model default).
        precision: ``fp32``, ``bf16`` or ``fp16`` (the half precisions with open_clip's mixed
            precision; None: model default, tiny models ``fp32``, others ``fp16``).
        lr_scheduler: ``cosine``, ``const`` or ``const-cooldown`` (None: model default; tiny
            models ``const-cooldown``, others ``cosine``).
        epochs_cooldown: final epochs of linear lr decay for ``const-cooldown`` (None: model
            default; tiny models 2/7 of the epochs, at least 2).
        lr_cooldown_end: lr at the end of the cooldown (None: model default).
        seed: seed of the initialisation and data order.
        workers: data-loading processes (open_clip needs at least 1 and no more than shards).
        threads: compute threads of the trainer (None: all cores); does not change the result
            beyond float rounding.
        device: ``cpu`` or ``cuda``.
        extra_args: further open_clip_train arguments, as one shell-quoted string.
        trainer: ``open_clip`` (open_clip's trainer), ``memory`` (data decoded once into memory,
            same model, loss, optimizer, schedule and checkpoints: :mod:`oodlab.train.memory`)
            or ``auto`` (``memory`` for CPU runs whose images fit in 2 GiB, else ``open_clip``);
            recorded in ``config.json``.
        overwrite: delete ``out`` first instead of resuming.

    Returns:
        the run's manifest.

    Raises:
        InputError: bad data or arguments; IncompatibleError: ``out`` holds another run;
        TrainingFailed: the trainer exited with an error (the run can be resumed).
    """
    out = Path(out).absolute()
    check_compute(device)
    cfg, shards = train_config(train_data, model=model, batch_size=batch_size, epochs=epochs, lr=lr, warmup=warmup,
                               wd=wd, precision=precision, lr_scheduler=lr_scheduler,
                               epochs_cooldown=epochs_cooldown, lr_cooldown_end=lr_cooldown_end, seed=seed,
                               workers=workers, device=device, extra_args=extra_args, trainer=trainer)
    # workers and device change neither the schedule nor (beyond float rounding) the result
    result = {k: v for k, v in cfg.to_json().items() if k not in ("workers", "device")}
    folder = RunFolder(out, "train", inputs={"train_data": shards.describe()}, parameters=result,
                       settings={"workers": workers, "device": device, "threads": threads}, reads=shards.shards)
    finished = folder.open(overwrite)
    if finished is not None:
        summary(f"train: {out} is complete already ({cfg.model}, {cfg.epochs} epochs)")
        return finished
    write_json(out / CONFIG_NAME, {"config": cfg.to_json(), "data": shards.describe()})
    start_epoch = max((c.epoch for c in epoch_checkpoints(out) if complete_checkpoint(str(c.path))), default=0)
    with Timer() as timer:
        if start_epoch >= cfg.epochs:
            status, tail, loss = 0, [], None
        else:
            cmd = [sys.executable, *single_command(cfg, out, resume=True)]
            env = _trainer_env(cfg, threads)
            status, tail, loss = _stream(cmd, cfg, env, start_epoch)
    if status != 0 or not _finished(out, cfg.epochs):
        last = "\n".join(tail[-15:])
        raise TrainingFailed(
            f"{out / LOG_NAME}: the {cfg.trainer} trainer exited with status {status} before epoch {cfg.epochs}. "
            f"Last lines:\n{last}\nFix: see the log; re-running the same command resumes from the last checkpoint."
        )
    checkpoints = epoch_checkpoints(out)
    manifest = folder.finish(
        model={"architecture": cfg.model},
        counts={"samples": shards.count, "samples_seen": cfg.samples_seen(), "epochs": cfg.epochs,
                "steps": cfg.steps_per_epoch() * cfg.epochs, "checkpoints": len(checkpoints)},
        outputs={"checkpoints": [str(c.path.relative_to(out)) for c in checkpoints], "config": CONFIG_NAME,
                 "log": LOG_NAME},
    )
    trained = cfg.samples_seen() * (cfg.epochs - start_epoch) // cfg.epochs
    rate = trained / timer.seconds if timer.seconds > 0 else 0.0
    how = (f"resumed at epoch {start_epoch}, " if start_epoch else "") + (
        f"{trained} samples in {timer.seconds:.1f} s ({rate:.0f}/s)")
    summary(f"train: {cfg.model} ({cfg.trainer} trainer) on {shards.count} samples x {cfg.epochs} epochs, batch {cfg.batch_size} "
            f"({cfg.samples_seen()} samples seen): {how}"
            f"{'' if loss is None else f', last loss {loss:.3f}'} -> {out} (epoch_0..{cfg.epochs})")
    return manifest
