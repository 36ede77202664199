"""Command lines that run a :class:`~oodlab.train.config.TrainConfig` on many GPUs.

``oodlab train`` itself runs one process (CPU or one GPU). For clusters it prints the
equivalent ``torchrun`` (one node, G GPUs) and Slurm (N nodes x G GPUs, one task per GPU, as in
open_clip's README) command lines. They run the same entry point with the same settings; the
global batch is split over the processes (``--batch-size`` is per process), and open_clip's
``--local-loss --gather-with-grad`` keep the contrastive loss over the whole global batch.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from oodlab.train.config import TrainConfig
from oodlab.utils.errors import InputError

ENTRY = "oodlab.train.entry"


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
    """The argv of the single-process run (``python -m oodlab.train.entry ...``) without the interpreter."""
    return ["-m", ENTRY, *cfg.trainer_args(run, 1, resume=resume)]


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
