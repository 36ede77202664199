"""Resharding throughput: ``oodlab subset`` vs a plain read-and-copy of the same tars, same run.

Generates img2dataset-style shards (``--shards`` x ``--per-shard`` samples; each a ``jpg`` member of
about ``--sample-bytes`` random bytes, a ``txt`` and a ``json``) in a temporary folder, reads them
once so that every method starts from the page cache, then times (best of ``--repeat``):

- copy: each tar read in 1 MiB blocks and written to a new file (the floor any resharder pays for
  the bytes it moves; like oodlab's shard writers, no fsync);
- sample copy: the straightforward Python resharder, every sample read with
  ``iter_tar_samples`` and written with ``ShardWriter`` (tar headers rebuilt, parquet + stats);
- subset: ``oodlab.subsets.subset`` of a ``--keep-fraction`` random key list into shards of
  ``--out-per-shard`` samples (scan, plan, copy, verification, manifests), and again with
  ``verify=False`` (no second index pass over the written tars).

Rates count the samples and bytes of the INPUT tars for the copies and of the written samples for
subset; the ratio compares seconds per written sample (so ``--keep-fraction 1`` compares equal work).

Usage:  python benchmarks/subset.py [--shards 20] [--per-shard 1000] [--sample-bytes 5000]
                                    [--keep-fraction 1.0] [--workers 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def make_shards(folder: Path, n_shards: int, per_shard: int, sample_bytes: int, seed: int = 0) -> list[str]:
    from oodlab.data.shard_writer import ShardWriter, make_key

    rng = np.random.default_rng(seed)
    keys = []
    for s in range(n_shards):
        with ShardWriter(folder, f"{s:05d}") as w:
            for i in range(per_shard):
                key = make_key(s, i, max(per_shard, 10))
                caption = f"a photo of item {s * per_shard + i}"
                meta = json.dumps({"key": key, "caption": caption, "status": "success"}).encode()
                size = int(sample_bytes * rng.uniform(0.5, 1.5))
                w.write(key, {"jpg": rng.bytes(size), "txt": caption.encode(), "json": meta},
                        {"caption": caption, "status": "success"})
                keys.append(key)
    return keys


def plain_copy(tars: list[Path], out: Path) -> int:
    out.mkdir()
    total = 0
    for tar in tars:
        with open(tar, "rb") as src, open(out / tar.name, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
                total += len(block)
    return total


def sample_copy(tars: list[Path], out: Path) -> int:
    from oodlab.data.shard_writer import ShardWriter
    from oodlab.data.shards import iter_tar_samples

    n = 0
    for tar in tars:
        with ShardWriter(out, tar.stem) as w:
            for sample in iter_tar_samples(tar):
                w.write(sample.key, sample.members, {"caption": sample.caption, "status": "success"})
                n += 1
    return n


def best_of(repeat: int, fn, make_out) -> float:
    times = []
    for _ in range(repeat):
        out = make_out()
        t = time.perf_counter()
        fn(out)
        times.append(time.perf_counter() - t)
        shutil.rmtree(out)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--sample-bytes", type=int, default=5000)
    ap.add_argument("--keep-fraction", type=float, default=1.0)
    ap.add_argument("--out-per-shard", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=0, help="0: in this process")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the temporary data (default: the system's)")
    args = ap.parse_args()
    os.environ.setdefault("OODLAB_QUIET", "1")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oodlab.subsets import subset
    from oodlab.data.tarindex import index_tar

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="oodlab-bench-subset-") as tmp:
        root = Path(tmp)
        keys = make_shards(root / "src", args.shards, args.per_shard, args.sample_bytes)
        tars = sorted((root / "src").glob("*.tar"))
        in_bytes = sum(t.stat().st_size for t in tars)
        for t in tars:  # into the page cache
            t.read_bytes()
        index_tar(tars[0])  # compile the numba kernel outside the timings
        rng = np.random.default_rng(1)
        chosen = sorted(rng.choice(len(keys), int(round(args.keep_fraction * len(keys))), replace=False))
        pq.write_table(pa.table({"key": [keys[i] for i in chosen]}), root / "keys.parquet")
        n_in, n_out = len(keys), len(chosen)
        counter = iter(range(10**6))
        fresh = lambda: root / f"out{next(counter)}"  # noqa: E731

        t_copy = best_of(args.repeat, lambda out: plain_copy(tars, out), fresh)
        t_samples = best_of(args.repeat, lambda out: sample_copy(tars, out), fresh)
        written: dict = {}

        def run_subset(out: Path, verify: bool = True) -> None:
            written.update(subset(root / "keys.parquet", [root / "src"], out, per_shard=args.out_per_shard,
                                  workers=args.workers, verify=verify)["counts"])

        t_subset = best_of(args.repeat, run_subset, fresh)
        t_noverify = best_of(args.repeat, lambda out: run_subset(out, verify=False), fresh)
        out_bytes = written["output_bytes"]

    def line(name: str, seconds: float, samples: int, nbytes: int) -> str:
        return f"{name:<12} {seconds:8.3f} s  {samples / seconds:12,.0f} samples/s  {nbytes / seconds / 1e6:9,.1f} MB/s"

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; python {platform.python_version()}")
    print(f"input: {args.shards} shards x {args.per_shard} samples, {in_bytes / 1e6:.1f} MB; "
          f"subset keeps {n_out} samples ({args.keep_fraction:.0%}) into shards of {args.out_per_shard}, "
          f"workers={args.workers}, best of {args.repeat}")
    print(line("copy", t_copy, n_in, in_bytes))
    print(line("sample copy", t_samples, n_in, in_bytes))
    print(line("subset", t_subset, n_out, out_bytes))
    print(line("  no verify", t_noverify, n_out, out_bytes))
    per_sample = lambda t, n: t / max(n, 1)  # noqa: E731
    ratio = lambda t: per_sample(t, n_out) / per_sample(t_copy, n_in)  # noqa: E731
    print(f"subset / copy (seconds per sample): {ratio(t_subset):.2f}x, without verification {ratio(t_noverify):.2f}x "
          f"(target <= 1.5x); sample copy / copy: {per_sample(t_samples, n_in) / per_sample(t_copy, n_in):.2f}x")


if __name__ == "__main__":
    main()
