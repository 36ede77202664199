"""A training run's configuration: defaults per model, validation, and open_clip's arguments.

The configuration is recorded in ``RUN/config.json``; the same object produces the single-process
command line and the torchrun / Slurm ones (:mod:`oodlab.train.launch`), so a run scaled out on
a cluster uses the same settings. ``batch_size`` is the *global* contrastive batch: with G
processes each gets ``batch_size / G``.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from oodlab.models.loading import check_compute
from oodlab.utils.errors import InputError

#: oodlab's precision words (as for inference: ``fp32``, ``bf16``, ``fp16``) -> open_clip_train's
#: ``--precision``: the half precisions train with automatic mixed precision (fp32 master weights)
PRECISIONS = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}
#: checkpoints a run keeps besides epoch 0 (about; every ``epochs // CHECKPOINTS`` epochs and the
#: last): a tiny-vit checkpoint with optimizer state is 41 MB, and a 40-epoch run on a small
#: pool would otherwise keep 1.6 GB; a resumed run repeats at most the epochs since the last one
CHECKPOINTS = 7
#: open_clip_train's --lr-scheduler choices (all after a linear warmup)
LR_SCHEDULERS = ("cosine", "const", "const-cooldown")
#: trainer -> the module run as ``python -m MODULE`` with open_clip_train's arguments: open_clip's
#: own trainer, or the one for data that fits in memory (same model, loss, optimizer, schedule and
#: checkpoints; decodes once, see :mod:`oodlab.train.memory`)
TRAINERS = {"open_clip": "oodlab.train.entry", "memory": "oodlab.train.memory"}
TRAINER_CHOICES = ("auto", *TRAINERS)
#: the most decoded image bytes (uint8 at the model's image size) ``auto`` gives the memory trainer
MEMORY_TRAINER_MAX_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Defaults:
    """Default hyper-parameters of a model (None in :func:`oodlab.train.train` means "use these").

    ``epochs`` is fixed, or derived from the data when ``samples_seen`` is set: the run sees about
    ``samples_seen`` samples (``round(samples_seen / num_samples)`` epochs, within 1 and
    ``max_epochs``), so a small pool gets more passes instead of an under-trained model. The
    const-cooldown schedule then cools down over ``cooldown_share`` of the epochs (at least
    ``epochs_cooldown``, at most all of them).
    """

    batch_size: int
    epochs: int
    lr: float
    warmup: int
    wd: float
    precision: str
    lr_scheduler: str
    epochs_cooldown: int | None
    lr_cooldown_end: float
    note: str
    samples_seen: int | None = None
    max_epochs: int | None = None
    cooldown_share: float = 0.0

    def epochs_for(self, num_samples: int) -> int:
        """The default number of epochs for data of ``num_samples`` samples."""
        if self.samples_seen is None:
            return self.epochs
        return max(1, min(self.max_epochs or self.epochs, round(self.samples_seen / max(1, num_samples))))

    def cooldown_for(self, epochs: int) -> int:
        """The default cooldown epochs of a run of ``epochs`` epochs."""
        return max(1, min(epochs, max(self.epochs_cooldown or 1, round(epochs * self.cooldown_share))))


#: settings of the papers' full-size runs: ICLR 2024, ViT-B/32 on LAION-200M subsets with a
#: global batch of 33,600 for 32 epochs; lr 5e-4 (the ICLR 2025 run names); wd 0.2 and cosine
#: schedule (open_clip's defaults, the ICML 2025 runs). Warmup and precision were not recorded:
#: 2000 steps (as in the ICML 2025 CC3M/CC12M runs) and open_clip's default ``amp``.
PAPER_DEFAULTS = Defaults(batch_size=33_600, epochs=32, lr=5e-4, warmup=2000, wd=0.2, precision="fp16",
                          lr_scheduler="cosine", epochs_cooldown=None, lr_cooldown_end=0.0,
                          note="ICLR 2024 / 2025 ViT-B/32 on LAION-200M subsets")

#: tiny-vit on the default synthetic world (12,000 pool samples, 24 classes), measured with the
#: memory trainer on one thread of a 2-core AMD EPYC Zen 3 (issue 11; val top-1, seed 0 unless
#: said). The world needs far less model than the issue-10 tiny-vit (64 px, patch 16, width 96,
#: text width 128 x 3 layers: 55% after 60,000 samples at batch 64): 32 px with patch 8 (the same
#: 16 patches), vision width 64, text width 64 x 2 layers learns faster per sample *and* runs
#: 2.5x faster per step (74% with vision width 96, 69.5% after 48,000 samples with width 64,
#: 53.5% with a 64-d embedding and 2 vision layers after 36,000). Batch 64 beat 128 and 32 at
#: the same samples (31.8 / 26.2 / 23.8% after 36,000 with the old model); peak lr 1.5e-3 and
#: 2e-3 were worse than 1e-3 (50.8 / 26.5%). A cooldown over 2/5 of the run matched 1/3.
#: The schedule is kept in samples seen (60,000 = 5 x 12,000, cooling down over the last 2/5), so
#: a small pool gets more passes (the small preset's 3,000 samples: 20 epochs).
_TINY_VIT = Defaults(batch_size=64, epochs=5, lr=1e-3, warmup=50, wd=0.1, precision="fp32",
                     lr_scheduler="const-cooldown", epochs_cooldown=2, lr_cooldown_end=1e-4,
                     note="default synthetic world, 1 CPU core, about 1 min, >= 70% val top-1",
                     samples_seen=60_000, max_epochs=40, cooldown_share=2 / 5)

#: model name -> defaults (others get PAPER_DEFAULTS); tiny-rn shares tiny-vit's settings (not tuned)
MODEL_DEFAULTS: dict[str, Defaults] = {
    "tiny-vit": _TINY_VIT,
    "tiny-rn": replace(_TINY_VIT, note="tiny-vit's settings, not tuned"),
}


def defaults_for(model: str) -> Defaults:
    return MODEL_DEFAULTS.get(model, PAPER_DEFAULTS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run (recorded in ``config.json``).

    Attributes:
        model: open_clip architecture or oodlab tiny config.
        data: open_clip ``--train-data`` (brace pattern or ``::``-joined tars).
        num_samples: samples in the data (``--train-num-samples``).
        batch_size: global contrastive batch (samples per optimiser step over all processes).
        epochs: passes over ``num_samples``.
        lr: peak learning rate (AdamW, cosine schedule after linear warmup).
        warmup: warmup steps.
        wd: AdamW weight decay (not applied to gains, biases, logit scale).
        precision: ``fp32``, ``bf16`` or ``fp16`` (open_clip's ``fp32``, ``amp_bf16``, ``amp``).
        lr_scheduler: ``cosine`` (to 0), ``const``, or ``const-cooldown`` (constant, then a linear
            decay over the last ``epochs_cooldown`` epochs to ``lr_cooldown_end``).
        epochs_cooldown: epochs of the cooldown (``const-cooldown`` only, else None).
        lr_cooldown_end: learning rate at the end of the cooldown.
        seed: seed of the initialisation and data order.
        workers: data-loading processes per training process.
        device: ``cpu`` or ``cuda``.
        extra_args: further open_clip_train arguments, verbatim.
        trainer: ``open_clip`` or ``memory`` (:data:`TRAINERS`).
    """

    model: str
    data: str
    num_samples: int
    batch_size: int
    epochs: int
    lr: float
    warmup: int
    wd: float
    precision: str
    lr_scheduler: str
    epochs_cooldown: int | None
    lr_cooldown_end: float
    seed: int
    workers: int
    device: str
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    trainer: str = "open_clip"

    def steps_per_epoch(self, processes: int = 1) -> int:
        """Optimiser steps per epoch, as open_clip computes them for webdataset (each worker
        gets the same number of full batches)."""
        per_process = self.batch_size // processes
        batches = math.ceil(self.num_samples / (per_process * processes))
        workers = max(1, self.workers)
        return math.ceil(batches / workers) * workers

    @property
    def save_every(self) -> int:
        """Epochs between checkpoints (open_clip's ``--save-frequency``; the last epoch is always saved)."""
        return max(1, self.epochs // CHECKPOINTS)

    def samples_seen(self, processes: int = 1) -> int:
        """Samples the run sees over all epochs (a partial last batch is filled by repetition)."""
        return self.steps_per_epoch(processes) * self.batch_size * self.epochs

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["extra_args"] = list(self.extra_args)
        out["steps_per_epoch"] = self.steps_per_epoch()
        out["samples_seen"] = self.samples_seen()
        out["save_every"] = self.save_every
        return out

    def trainer_args(self, run: Path, processes: int = 1, *, resume: bool = False) -> list[str]:
        """open_clip_train's arguments for this run written to folder ``run`` by ``processes``
        processes (``--logs run.parent --name run.name``)."""
        args = [
            "--train-data", self.data,
            "--train-num-samples", str(self.num_samples),
            "--dataset-type", "webdataset",
            "--model", self.model,
            "--batch-size", str(self.batch_size // processes),
            "--epochs", str(self.epochs),
            "--lr", repr(self.lr),
            "--warmup", str(self.warmup),
            "--wd", repr(self.wd),
            "--precision", PRECISIONS[self.precision],
            "--lr-scheduler", self.lr_scheduler,
            "--seed", str(self.seed),
            "--workers", str(self.workers),
            "--device", self.device,
            "--logs", str(run.parent),
            "--name", run.name,
            "--save-frequency", str(self.save_every),
            "--log-every-n-steps", "10",
        ]
        if self.lr_scheduler == "const-cooldown":
            args += ["--epochs-cooldown", str(self.epochs_cooldown), "--lr-cooldown-end", repr(self.lr_cooldown_end)]
        if processes > 1:
            args += ["--local-loss", "--gather-with-grad"]
        if resume:
            args += ["--resume", "latest"]
        return args + list(self.extra_args)


def _image_bytes(model: str, num_samples: int) -> int | None:
    """Bytes of ``num_samples`` decoded images (uint8, the model's image size); None: unknown model."""
    import open_clip

    from oodlab.models.registry import register_tiny_configs

    register_tiny_configs()
    cfg = open_clip.get_model_config(model)
    if not cfg:
        return None
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    return num_samples * 3 * h * w


def resolve_trainer(trainer: str, *, model: str, num_samples: int, device: str, precision: str,
                    extra_args: tuple[str, ...]) -> str:
    """The trainer ``auto`` stands for: ``memory`` for a single CPU process whose decoded images
    fit in :data:`MEMORY_TRAINER_MAX_BYTES` (fp32 or bf16, no extra open_clip arguments), else
    ``open_clip``; any other choice is returned as it is.

    Raises:
        InputError: an unknown trainer.
    """
    if trainer not in TRAINER_CHOICES:
        raise InputError(None, f"trainer {trainer!r} is not one of {', '.join(TRAINER_CHOICES)}",
                         "pick one of them (auto: the memory trainer for small CPU runs, else open_clip)")
    if trainer != "auto":
        return trainer
    size = _image_bytes(model, num_samples) if device == "cpu" and precision in ("fp32", "bf16") else None
    fits = size is not None and size <= MEMORY_TRAINER_MAX_BYTES and not extra_args
    return "memory" if fits else "open_clip"


def build_config(
    *,
    model: str,
    data: str,
    num_samples: int,
    batch_size: int | None,
    epochs: int | None,
    lr: float | None,
    warmup: int | None,
    wd: float | None,
    precision: str | None,
    lr_scheduler: str | None,
    epochs_cooldown: int | None,
    lr_cooldown_end: float | None,
    seed: int,
    workers: int,
    device: str,
    extra_args: str,
    trainer: str = "auto",
) -> TrainConfig:
    """Fill unset hyper-parameters from the model's defaults, resolve ``trainer`` (see
    :func:`resolve_trainer`) and validate everything.

    Raises:
        InputError: a value out of range, an unknown precision, unparsable extra arguments.
    """
    d = defaults_for(model)
    scheduler = d.lr_scheduler if lr_scheduler is None else lr_scheduler
    n_epochs = d.epochs_for(num_samples) if epochs is None else epochs
    if epochs_cooldown is None and scheduler == "const-cooldown":
        epochs_cooldown = d.cooldown_for(n_epochs)
    cfg = TrainConfig(
        model=model, data=data, num_samples=num_samples,
        batch_size=d.batch_size if batch_size is None else batch_size,
        epochs=n_epochs,
        lr=d.lr if lr is None else lr,
        warmup=d.warmup if warmup is None else warmup,
        wd=d.wd if wd is None else wd,
        precision=d.precision if precision is None else precision,
        lr_scheduler=scheduler,
        epochs_cooldown=epochs_cooldown if scheduler == "const-cooldown" else None,
        lr_cooldown_end=(d.lr_cooldown_end if lr_cooldown_end is None else lr_cooldown_end)
        if scheduler == "const-cooldown" else 0.0,
        seed=seed, workers=workers, device=device,
        extra_args=tuple(_split_extra(extra_args)),
    )
    cfg = replace(cfg, trainer=resolve_trainer(trainer, model=model, num_samples=num_samples, device=device,
                                               precision=cfg.precision, extra_args=cfg.extra_args))
    checks = [
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.lr >= 0, "lr must be >= 0"),
        (cfg.warmup >= 0, "warmup must be >= 0"),
        (cfg.wd >= 0, "wd must be >= 0"),
        (cfg.workers >= 1, "workers must be >= 1 (open_clip's webdataset loader needs a worker)"),
        (cfg.num_samples >= 1, "the data holds no samples"),
        (cfg.lr_scheduler in LR_SCHEDULERS,
         f"lr_scheduler {cfg.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}"),
        (cfg.epochs_cooldown is None or 1 <= cfg.epochs_cooldown <= cfg.epochs,
         "epochs_cooldown must be between 1 and epochs"),
        (cfg.lr_cooldown_end >= 0, "lr_cooldown_end must be >= 0"),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(None, problem, "fix the argument")
    check_compute(cfg.device, cfg.precision, here=False)  # train-commands writes lines for GPU machines
    return cfg


_OWNED = {"--train-data", "--train-num-samples", "--dataset-type", "--model", "--batch-size", "--epochs", "--lr",
          "--warmup", "--wd", "--precision", "--seed", "--workers", "--device", "--logs", "--name", "--resume",
          "--save-frequency", "--lr-scheduler", "--epochs-cooldown", "--lr-cooldown-end"}


def _split_extra(extra: str) -> list[str]:
    try:
        parts = shlex.split(extra or "")
    except ValueError as err:
        raise InputError(None, f"extra_args {extra!r} cannot be parsed ({err})",
                         "quote it like a shell command line") from err
    owned = sorted({p.split("=")[0] for p in parts} & _OWNED)
    if owned:
        raise InputError(None, f"extra_args sets {owned}, which oodlab sets itself",
                         "use the corresponding option of oodlab train instead")
    return parts
