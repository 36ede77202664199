"""Training cost: today's default run against the configuration before issue 11, on one world.

Both runs train on the same synthetic world's pool and are evaluated zero-shot on its val set
after every epoch; they run one after the other in this process, each with the machine to itself.

- before: the issue-10 default (``tiny-vit`` as it was: 64 px, patch 16, width 96, text width 128
  with 3 layers; batch 128, 7 epochs = 84,000 samples seen) through open_clip's trainer
  (webdataset loader, one worker, 2 compute threads);
- now: ``oodlab train``'s default call (``trainer="auto"``: the in-memory trainer on one thread,
  the current ``tiny-vit`` and its defaults).

For each: wall time, core-seconds (user + system CPU of the trainer process and its loader),
samples/s, val top-1 per epoch, and the time and core-seconds until the first checkpoint at or
above the target accuracy (from the checkpoint files' times).

Usage:  python benchmarks/train.py [--world DIR] [--preset default|small] [--target 0.70]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: tiny-vit as it was before issue 11 (the architecture is gone from the package; kept here only
#: to measure against)
BEFORE_ARCH = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
BEFORE = dict(batch_size=128, epochs=7, lr=1e-3, warmup=50, wd=0.1, lr_scheduler="const-cooldown",
              epochs_cooldown=2, lr_cooldown_end=1e-4)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_before(pool: Path, out: Path, arch_dir: Path) -> dict:
    """open_clip's trainer on the pre-issue-11 model and schedule, every epoch saved."""
    from oodlab.train.config import build_config
    from oodlab.train.data import resolve_train_data

    data = resolve_train_data([pool])
    cfg = build_config(model="tiny-vit-before", data=data.pattern, num_samples=data.count, precision="fp32",
                       seed=0, workers=1, device="cpu", extra_args="", trainer="open_clip", **BEFORE)
    args = cfg.trainer_args(out, 1)
    args[args.index("--save-frequency") + 1] = "1"
    boot = ("import sys, oodlab, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
            "from oodlab.train.entry import main; sys.exit(main())")
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE")
    return _timed([sys.executable, "-c", boot, str(arch_dir), *args], env, out, cfg.samples_seen(),
                  cfg.epochs)


def run_now(pool: Path, out: Path) -> dict:
    """``oodlab train``'s default call, every epoch saved."""
    from oodlab.train.config import build_config
    from oodlab.train.data import resolve_train_data
    from oodlab.train.launch import single_command

    data = resolve_train_data([pool])
    cfg = build_config(model="tiny-vit", data=data.pattern, num_samples=data.count, batch_size=None, epochs=None,
                       lr=None, warmup=None, wd=None, precision=None, lr_scheduler=None, epochs_cooldown=None,
                       lr_cooldown_end=None, seed=0, workers=1, device="cpu", extra_args="")
    cmd = [sys.executable, *single_command(cfg, out)]
    cmd[cmd.index("--save-frequency") + 1] = "1"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    result = _timed(cmd, env, out, cfg.samples_seen(), cfg.epochs)
    result["trainer"] = cfg.trainer
    return result


def _timed(cmd: list[str], env: dict, out: Path, samples_seen: int, epochs: int) -> dict:
    cpu0, t0 = _cpu_seconds(), time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.time() - t0, _cpu_seconds() - cpu0
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    times = {e: (out / "checkpoints" / f"epoch_{e}.pt").stat().st_mtime - t0 for e in range(1, epochs + 1)}
    return {"wall_s": wall, "core_s": cpu, "samples_seen": samples_seen, "epoch_s": times}


def accuracies(run: Path, model: str, val: Path, work: Path) -> list[float]:
    from oodlab.evaluation.evaluate import evaluate

    res = evaluate(run, {"val": val}, work, model=model, workers=0)
    return res["datasets"]["val"]["metrics"]["acc1"]


def to_target(result: dict, acc: list[float], target: float) -> tuple[float, float] | None:
    """(seconds, core-seconds) until the first epoch at or above ``target`` (core-seconds scaled
    by the share of the wall time; None: never reached)."""
    for epoch, a in enumerate(acc[1:], start=1):
        if a >= target:
            s = result["epoch_s"][epoch]
            return s, result["core_s"] * s / result["wall_s"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=Path, help="a synthetic world (default: generate one in a temporary folder)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--target", type=float, default=0.70)
    ap.add_argument("--skip-before", action="store_true", help="only today's run")
    a = ap.parse_args()
    import oodlab  # noqa: F401  (torchvision next to the CPU torch; before open_clip)
    import open_clip
    from oodlab.data.synth.world import synth

    sys.path.insert(0, str(Path(__file__).parent))
    from neighbors import cpu_line

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = a.world
        if world is None:
            world = tmp / "world"
            synth(world, preset=a.preset, seed=0, workers=2)
        arch_dir = tmp / "arch"
        arch_dir.mkdir()
        (arch_dir / "tiny-vit-before.json").write_text(json.dumps(BEFORE_ARCH))
        open_clip.add_model_config(arch_dir)
        print(f"machine: {cpu_line()}; {os.cpu_count()} cores")
        print(f"world: {world} (val: {world / 'eval' / 'val'}); target val top-1 {a.target:.0%}\n")
        rows = []
        plans = [("now: oodlab train default", "tiny-vit", lambda o: run_now(world / "pool", o))]
        if not a.skip_before:
            plans.insert(0, ("before: open_clip trainer, issue-10 defaults", "tiny-vit-before",
                             lambda o: run_before(world / "pool", o, arch_dir)))
        for label, model, go in plans:
            out = tmp / model
            result = go(out)
            acc = accuracies(out, model, world / "eval" / "val", tmp / f"{model}-eval")
            rows.append((label, result, acc, to_target(result, acc, a.target)))
            print(f"{label}: val top-1 per epoch " + " ".join(f"{100 * x:.1f}" for x in acc[1:]), flush=True)
        print()
        print(f"| run | samples seen | wall s | core-s | samples/s | final val top-1 | to {a.target:.0%}: s | core-s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, r, acc, hit in rows:
            reach = f"{hit[0]:.1f} | {hit[1]:.1f}" if hit else "not reached | -"
            print(f"| {label} | {r['samples_seen']:,} | {r['wall_s']:.1f} | {r['core_s']:.1f} | "
                  f"{r['samples_seen'] / r['wall_s']:.0f} | {100 * acc[-1]:.1f}% | {reach} |")
        if len(rows) == 2:
            (_, b, _, bh), (_, n, _, nh) = rows
            print(f"\ncore-seconds of the whole run: {b['core_s'] / n['core_s']:.1f}x fewer; wall {b['wall_s'] / n['wall_s']:.1f}x"
                  + (f"; to the target: {bh[1] / nh[1]:.1f}x fewer core-seconds" if bh and nh else ""))


if __name__ == "__main__":
    main()
