"""CLI: ``train`` (open_clip's trainer on shards) and ``eval`` (zero-shot classification)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from oodlab.cli._app import app, call, command, parse_pairs

TRAIN = "oodlab.train.run:train"
EVAL = "oodlab.evaluation.evaluate:evaluate"


@command(app, "train", TRAIN)
def train(
    data: List[str] = typer.Option(..., help="Webdataset shards: a folder of .tar, quoted brace patterns, globs or tars; repeat for several."),
    model: str = typer.Option("tiny-vit", help="open_clip architecture or oodlab tiny config."),
    out: Path = typer.Option(..., help="Run folder (RUN/checkpoints/epoch_{n}.pt); an unfinished run is resumed."),
    batch_size: Optional[int] = typer.Option(None, help="Global contrastive batch (default: the model's; tiny 128, paper models 33,600)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the data (default: the model's)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate, cosine schedule (default: the model's)."),
    warmup: Optional[int] = typer.Option(None, help="Warmup steps (default: the model's)."),
    wd: Optional[float] = typer.Option(None, help="AdamW weight decay (default: the model's)."),
    precision: Optional[str] = typer.Option(None, help="open_clip precision: fp32, amp_bf16, amp, ... (default: the model's)."),
    lr_scheduler: Optional[str] = typer.Option(None, help="cosine, const or const-cooldown (default: the model's)."),
    epochs_cooldown: Optional[int] = typer.Option(None, help="Final epochs of linear lr decay for const-cooldown (default: the model's)."),
    lr_cooldown_end: Optional[float] = typer.Option(None, help="Learning rate at the end of the cooldown (default: the model's)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the data order."),
    workers: int = typer.Option(1, help="Data-loading processes (1 to the number of shards)."),
    threads: Optional[int] = typer.Option(None, help="Compute threads of the trainer (default: all cores)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    extra_args: str = typer.Option("", help="Further open_clip_train arguments, one quoted string (e.g. '--grad-clip-norm 1')."),
    print_command: bool = typer.Option(False, help="Print the torchrun and Slurm command lines for this configuration instead of training."),
    nodes: int = typer.Option(1, help="Nodes of the printed Slurm command."),
    gpus_per_node: int = typer.Option(8, help="GPUs per node of the printed commands (the batch is split over all GPUs)."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
) -> None:
    """Train CLIP with open_clip's trainer on webdataset shards; records config.json, keeps epoch_0."""
    result = call(TRAIN, data=data, model=model, out=out, batch_size=batch_size, epochs=epochs, lr=lr,
                  warmup=warmup, wd=wd, precision=precision, lr_scheduler=lr_scheduler,
                  epochs_cooldown=epochs_cooldown, lr_cooldown_end=lr_cooldown_end, seed=seed, workers=workers, threads=threads, device=device,
                  extra_args=extra_args, print_command=print_command, nodes=nodes, gpus_per_node=gpus_per_node,
                  overwrite=overwrite)
    if print_command:
        typer.echo(f"# one process (CPU or one GPU)\n{result['single']}\n")
        typer.echo(f"# one node, {gpus_per_node} GPUs\n{result['torchrun']}\n")
        typer.echo(f"# Slurm, {nodes} node(s) x {gpus_per_node} GPUs (sbatch this script)\n{result['slurm']}")


@command(app, "eval", EVAL)
def eval_(
    model: str = typer.Option("tiny-vit", help="open_clip architecture or oodlab tiny config of the checkpoint."),
    checkpoint: Path = typer.Option(..., help="Weights file, or an `oodlab train` run folder (all epochs: curves)."),
    datasets: List[str] = typer.Option(..., "--dataset", help="NAME=PATH; NAME selects the spec (imagenet-val, imagenet-r, domainnet-sketch, ...) unless --spec names one; repeat."),
    out: Path = typer.Option(..., help="Output folder (completed checkpoint x dataset pairs are kept: resume)."),
    specs: Optional[List[str]] = typer.Option(None, "--spec", help="NAME=SPEC for a dataset not named after its spec (SPEC may be 'world')."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16 (GPU)."),
    batch_size: int = typer.Option(256, help="Images per forward pass."),
    workers: int = typer.Option(1, help="DataLoader processes decoding images (0: in-process)."),
    cache_mb: int = typer.Option(1024, help="MiB of decoded images kept across checkpoints (0: decode each time)."),
    save_logits: bool = typer.Option(False, help="Also save float16 cosine logits [n, classes] per pair."),
    overwrite: bool = typer.Option(False, help="Delete OUT first instead of resuming."),
) -> None:
    """Zero-shot top-1, top-5 and mean per-class recall; per-sample predictions; CLIP_benchmark JSON; curves."""
    call(EVAL, model=model, checkpoint=checkpoint, datasets=parse_pairs(datasets, "--dataset"), out=out,
         specs=parse_pairs(specs or [], "--spec"), device=device, precision=precision, batch_size=batch_size,
         workers=workers, cache_mb=cache_mb, save_logits=save_logits, overwrite=overwrite)
