"""``oodlab train-commands``: the command lines that run a training configuration elsewhere.

``oodlab train`` itself runs one process (CPU or one GPU). :func:`train_commands` gives, for the
same arguments, the single-process command line, the ``torchrun`` one (one node, G GPUs) and a
Slurm script (N nodes x G GPUs, one task per GPU, as in open_clip's README). They run the same
entry point with the same settings; the global batch is split over the processes
(``--batch-size`` is per process), and open_clip's ``--local-loss --gather-with-grad`` keep the
contrastive loss over the whole global batch. Every line is shell-quoted (``shlex.join``): a
brace pattern in ``--train-data`` reaches open_clip as one argument.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from oodlab.train.config import TRAINERS, TrainConfig, build_config
from oodlab.train.data import TrainData, resolve_train_data
from oodlab.utils.errors import InputError

#: multi-process runs (torchrun, Slurm) always go through open_clip's trainer
ENTRY = TRAINERS["open_clip"]


def _check_split(cfg: TrainConfig, processes: int) -> None:
    if processes < 1:
        raise InputError(None, "nodes and gpus_per_node must be >= 1", None)
    if cfg.batch_size % processes:
        raise InputError(None, f"the global batch {cfg.batch_size} does not split evenly over {processes} GPUs",
                         "pick a batch size divisible by nodes x gpus_per_node")


def _gpu_args(cfg: TrainConfig, run: Path, processes: int) -> list[str]:
    args = cfg.trainer_args(run, processes, resume=True)
    i = args.index("--device")
    args[i + 1] = "cuda"
    return args


def single_command(cfg: TrainConfig, run: Path, *, resume: bool = False) -> list[str]:
    """The argv of the single-process run (``python -m MODULE ...``, the module of ``cfg.trainer``)
    without the interpreter."""
    return ["-m", TRAINERS[cfg.trainer], *cfg.trainer_args(run, 1, resume=resume)]


def torchrun_command(cfg: TrainConfig, run: Path, gpus_per_node: int) -> str:
    """One node, ``gpus_per_node`` GPUs: a shell command line."""
    _check_split(cfg, gpus_per_node)
    args = _gpu_args(cfg, run, gpus_per_node)
    return shlex.join(["torchrun", f"--nproc_per_node={gpus_per_node}", "-m", ENTRY, *args])


def slurm_script(cfg: TrainConfig, run: Path, nodes: int, gpus_per_node: int) -> str:
    """An ``sbatch`` script for ``nodes`` x ``gpus_per_node`` GPUs (open_clip reads Slurm's
    environment to set up the process group)."""
    processes = nodes * gpus_per_node
    _check_split(cfg, processes)
    cmd = shlex.join(["python", "-u", "-m", ENTRY, *_gpu_args(cfg, run, processes)])
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={run.name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus_per_node}",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={max(2, cfg.workers + 1)}",
        f"#SBATCH --output={run}/slurm-%j.out",
        "export MASTER_PORT=12802",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"srun --cpu_bind=v --accel-bind=gn {cmd}",
        "",
    ])


def train_config(train_data: str | Path | Sequence[str | Path], *, model: str, batch_size: int | None,
                 epochs: int | None, lr: float | None, warmup: int | None, wd: float | None, precision: str | None,
                 lr_scheduler: str | None, epochs_cooldown: int | None, lr_cooldown_end: float | None, seed: int,
                 workers: int, device: str, extra_args: str,
                 trainer: str = "open_clip") -> tuple[TrainConfig, TrainData]:
    """The configuration of a run on ``train_data`` (shared by ``train`` and ``train_commands``).

    Raises:
        InputError: bad data or arguments, or more data-loading workers than shards.
    """
    data = resolve_train_data(train_data)
    cfg = build_config(model=model, data=data.pattern, num_samples=data.count, batch_size=batch_size,
                       epochs=epochs, lr=lr, warmup=warmup, wd=wd, precision=precision, lr_scheduler=lr_scheduler,
                       epochs_cooldown=epochs_cooldown, lr_cooldown_end=lr_cooldown_end, seed=seed,
                       workers=workers, device=device, extra_args=extra_args, trainer=trainer)
    if cfg.workers > len(data.shards):
        raise InputError(None, f"workers={cfg.workers} but the data has {len(data.shards)} shards",
                         "use at most one worker per shard (open_clip's requirement)")
    return cfg, data


def train_commands(
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
    device: str = "cpu",
    extra_args: str = "",
    nodes: int = 1,
    gpus_per_node: int = 8,
) -> dict[str, str]:
    """The command lines of the run ``oodlab train`` would do with these arguments; trains nothing.

    Args:
        train_data: shards, as for ``oodlab train``.
        out: the run folder the commands write (nothing is written now).
        model: open_clip architecture or oodlab tiny config.
        batch_size: global contrastive batch, split over the GPUs (None: the model's default).
        epochs: passes over the data (None: the model's default for this data).
        lr: peak learning rate (None: the model's default).
        warmup: warmup steps (None: the model's default).
        wd: AdamW weight decay (None: the model's default).
        precision: ``fp32``, ``bf16`` or ``fp16`` (None: the model's default).
        lr_scheduler: ``cosine``, ``const`` or ``const-cooldown`` (None: the model's default).
        epochs_cooldown: final epochs of linear lr decay for ``const-cooldown`` (None: default).
        lr_cooldown_end: lr at the end of the cooldown (None: the model's default).
        seed: seed of the initialisation and data order.
        workers: data-loading processes per training process.
        device: the single-process line's device (the GPU lines use ``cuda``).
        extra_args: further open_clip_train arguments, as one shell-quoted string.
        nodes: nodes of the Slurm job.
        gpus_per_node: GPUs per node of the torchrun line and the Slurm job.

    Returns:
        ``single`` (one process), ``torchrun`` (one node) and ``slurm`` (an sbatch script), each
        shell-quoted.

    Raises:
        InputError: bad data or arguments, or a global batch that does not split over the GPUs.
    """
    cfg, _ = train_config(train_data, model=model, batch_size=batch_size, epochs=epochs, lr=lr, warmup=warmup,
                          wd=wd, precision=precision, lr_scheduler=lr_scheduler, epochs_cooldown=epochs_cooldown,
                          lr_cooldown_end=lr_cooldown_end, seed=seed, workers=workers, device=device,
                          extra_args=extra_args)
    run = Path(out).absolute()
    return {
        "single": shlex.join(["python", *single_command(cfg, run, resume=True)]),
        "torchrun": torchrun_command(cfg, run, gpus_per_node),
        "slurm": slurm_script(cfg, run, nodes, gpus_per_node),
    }
