"""The commands of the ``oodlab`` CLI: each is one public function (``COMMANDS``).

A command's name is its function's name with ``_`` for spaces and dashes (``store info`` ->
``store_info``, ``train-commands`` -> ``train_commands``); its options are generated from the
function (:mod:`oodlab.cli.build`). A ``show`` function prints what the function returned, for the
commands whose result is the answer (stages print their own one-line summary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import click


def _print_json(result: Any) -> None:
    click.echo(json.dumps(result, indent=2))


def _print_problems(problems: list[str]) -> int:
    for p in problems:
        click.echo(p, err=True)
    if problems:
        return 1
    click.echo("ok")
    return 0


def _print_commands(commands: dict[str, str]) -> None:
    click.echo(f"# one process (CPU or one GPU)\n{commands['single']}\n")
    click.echo(f"# one node, torchrun\n{commands['torchrun']}\n")
    click.echo(f"# Slurm (sbatch this script)\n{commands['slurm']}")


def _print_table(manifest: dict[str, Any]) -> None:
    click.echo(manifest["table_md"])


@dataclass(frozen=True)
class Command:
    """One CLI command: ``name`` (words), the ``module:function`` it calls, how its result is shown."""

    name: str
    target: str
    show: Callable[[Any], int | None] | None = None


#: every command, in pipeline order
COMMANDS: tuple[Command, ...] = (
    Command("synth", "oodlab.data.synth.world:synth"),
    Command("embed", "oodlab.embeddings.embed:embed"),
    Command("store info", "oodlab.embeddings.validate:store_info", _print_json),
    Command("store validate", "oodlab.embeddings.validate:store_validate", _print_problems),
    Command("neighbors", "oodlab.similarity.neighbors:neighbors"),
    Command("index build", "oodlab.similarity.index:index_build"),
    Command("index search", "oodlab.similarity.index:index_search"),
    Command("similarity report", "oodlab.analysis.report:similarity_report"),
    Command("similarity accuracy", "oodlab.analysis.accuracy:similarity_accuracy"),
    Command("similarity gallery", "oodlab.analysis.gallery:similarity_gallery"),
    Command("prune near", "oodlab.subsets.prune:prune_near"),
    Command("prune far", "oodlab.subsets.prune:prune_far"),
    Command("prune aligned", "oodlab.subsets.prune:prune_aligned"),
    Command("prune random", "oodlab.subsets.prune:prune_random"),
    Command("dedup", "oodlab.subsets.dedup:dedup"),
    Command("subset", "oodlab.subsets.reshard:subset"),
    Command("domains train", "oodlab.domains.head:domains_train"),
    Command("domains calibrate", "oodlab.domains.calibrate:domains_calibrate"),
    Command("domains predict", "oodlab.domains.predict:domains_predict"),
    Command("domains subset", "oodlab.domains.select:domains_subset"),
    Command("domains compose", "oodlab.domains.compose:domains_compose"),
    Command("domains clean", "oodlab.domains.clean:domains_clean"),
    Command("domains keywords", "oodlab.domains.keywords:domains_keywords"),
    Command("domains mix", "oodlab.domains.mix:domains_mix"),
    Command("domains label-page", "oodlab.domains.label_page:domains_label_page"),
    Command("train", "oodlab.train.run:train"),
    Command("train-commands", "oodlab.train.launch:train_commands", _print_commands),
    Command("evaluate", "oodlab.evaluation.evaluate:evaluate"),
    Command("experiment similarity", "oodlab.experiments.similarity:experiment_similarity", _print_table),
    Command("experiment domains", "oodlab.experiments.domains:experiment_domains", _print_table),
    Command("demo", "oodlab.experiments.demo:demo"),
    Command("report", "oodlab.report.build:report"),
)

#: command group -> its help
GROUPS: dict[str, str] = {
    "store": "Inspect and check embedding stores.",
    "index": "Approximate nearest-neighbour indexes (faiss) for browsing; recall is measured against exact search.",
    "similarity": "Analyse train-test similarity: the similarity gap, accuracy vs similarity, galleries.",
    "prune": "Prune a pool by similarity to eval sets; every rule writes kept.parquet (the keys that stay) and removed.parquet.",
    "domains": "Natural / rendition / ambiguous: a classifier on stored embeddings, thresholds certified to a target precision, predictions for whole stores.",
    "experiment": "The papers' experiments as one command each.",
}
