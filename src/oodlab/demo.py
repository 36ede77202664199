"""``oodlab demo``: the end-to-end pipeline on the synthetic world.

Each stage is a function over the previous stages' artifacts under ``OUT`` and is skipped when its
outputs are complete, so an interrupted demo re-run continues where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from oodlab.utils.atomic import write_json
from oodlab.utils.progress import Timer, summary

log = logging.getLogger(__name__)

EVAL_SETS = ("val", "v2", "sketch", "r", "a", "objectnet")


@dataclass
class DemoContext:
    out: Path
    preset: str
    seed: int
    workers: int | None
    model: str
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def world(self) -> Path:
        return self.out / "world"

    def store(self, name: str) -> Path:
        return self.out / "stores" / name


def stage_world(ctx: DemoContext) -> dict[str, Any]:
    from oodlab.data.synth import generate_world
    from oodlab.utils.atomic import read_json

    if (ctx.world / "world.json").exists():
        return {"world": str(ctx.world), "resumed": True, **_world_counts(read_json(ctx.world / "world.json"))}
    world = generate_world(ctx.world, preset=ctx.preset, seed=ctx.seed, workers=ctx.workers)
    return {"world": str(ctx.world), **_world_counts(world)}


def _world_counts(world: dict[str, Any]) -> dict[str, Any]:
    return {"counts": world.get("counts")}


def stage_embed(ctx: DemoContext) -> dict[str, Any]:
    from oodlab.embeddings.embed import embed

    jobs = {"pool": [ctx.world / "pool"], "imagenet-train": [ctx.world / "imagenet-train"]}
    jobs.update({f"eval-{name}": [ctx.world / "eval" / name] for name in EVAL_SETS})
    counts = {}
    for name, sources in jobs.items():
        sidecar = embed(sources, ctx.store(name), model=ctx.model, text=name == "pool", workers=1)
        counts[name] = sidecar["count"]
    return {"stores": str(ctx.out / "stores"), "rows": counts}


#: the demo's stages, in pipeline order (later issues append theirs)
STAGES: dict[str, Callable[[DemoContext], dict[str, Any]]] = {
    "world": stage_world,
    "embed": stage_embed,
}


def run_demo(
    out: str | Path = "demo-out",
    *,
    preset: str = "default",
    seed: int = 0,
    workers: int | None = None,
    model: str = "tiny-vit",
) -> dict[str, Any]:
    """Run every stage on a synthetic world under ``out`` and write ``out/demo.json``.

    Args:
        out: output folder (re-running continues an interrupted demo).
        preset: synthetic world size (``tiny``, ``small``, ``default``).
        seed: world seed.
        workers: processes for world generation (default: all cores).
        model: the CLIP architecture used throughout.

    Returns:
        per-stage results (also in ``out/demo.json``).
    """
    ctx = DemoContext(Path(out), preset, seed, workers, model)
    ctx.out.mkdir(parents=True, exist_ok=True)
    with Timer() as total:
        for name, stage in STAGES.items():
            with Timer() as t:
                ctx.results[name] = stage(ctx)
            ctx.results[name]["seconds"] = round(t.seconds, 1)
            summary(f"[bold green]demo[/] stage {name} done in {t.seconds:.1f} s")
    ctx.results["total_seconds"] = round(total.seconds, 1)
    write_json(ctx.out / "demo.json", ctx.results)
    summary(f"demo finished in {total.seconds:.0f} s; outputs under {ctx.out} (index: {ctx.out / 'demo.json'})")
    return ctx.results
