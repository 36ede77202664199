"""Embedding throughput: the `oodlab embed` pipeline vs the bare model forward pass.

Both run in one process on the same images: the pipeline reads JPEGs from webdataset shards,
decodes, resizes and normalises them in DataLoader workers and writes a store; the bare forward
pass gets the same images already preprocessed in memory. The ratio is the share of the model's
throughput that the pipeline delivers (data loading overhead); target >= 0.9.

Usage:  python benchmarks/embed.py [--model tiny-vit|ViT-B-32] [--images N] [--precision bf16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, size: int, per_shard: int = 1000) -> None:
    """Shards of smooth random JPEGs (as img2dataset writes them), ``size`` px."""
    from PIL import Image

    from oodlab.data.shard_writer import ShardWriter, make_key

    rng = np.random.default_rng(0)
    for s in range(-(-n // per_shard)):
        with ShardWriter(folder, f"{s:05d}") as w:
            for i in range(min(per_shard, n - s * per_shard)):
                small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(small).resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=90)
                key = make_key(s, i)
                w.write(key, {"jpg": buf.getvalue(), "txt": b"a caption", "json": json.dumps({"key": key}).encode()})


def bare_forward(model: str, precision: str, shards: Path, batch_size: int) -> tuple[float, int]:
    """Images/s of encode_image on preprocessed tensors (decoding done beforehand, not timed)."""
    import torch
    from PIL import Image

    from oodlab.data.shards import iter_tar_samples
    from oodlab.models import load_model

    loaded = load_model(model, precision=precision)
    images = [loaded.preprocess(Image.open(io.BytesIO(s.image)).convert("RGB"))
              for tar in sorted(shards.glob("*.tar")) for s in iter_tar_samples(tar)]
    batches = [torch.stack(images[i : i + batch_size]).to(loaded.dtype) for i in range(0, len(images), batch_size)]
    with torch.inference_mode():
        loaded.model.encode_image(batches[0])  # warm-up
        start = time.perf_counter()
        for x in batches:
            loaded.model.encode_image(x)
        seconds = time.perf_counter() - start
    return len(images) / seconds, len(images)


def pipeline(model: str, precision: str, shards: Path, batch_size: int, workers: int) -> float:
    """Images/s of `oodlab embed` from the shards to a store (model loading excluded)."""
    from oodlab.embeddings.embed import embed
    from oodlab.models import load_model

    start = time.perf_counter()
    load_model(model, precision=precision)
    load_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sidecar = embed([shards], Path(tmp) / "store", model=model, precision=precision, batch_size=batch_size,
                        workers=workers)
        seconds = time.perf_counter() - start - load_seconds
    return sidecar["count"] / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-vit")
    p.add_argument("--images", type=int, default=None, help="default: 20,000 (tiny models) or 1,024")
    p.add_argument("--precision", default=None, help="default: fp32 for tiny models, bf16 otherwise")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    os.environ.setdefault("OODLAB_QUIET", "1")
    tiny = a.model.startswith("tiny")
    n = a.images or (20_000 if tiny else 1_024)
    precision = a.precision or ("fp32" if tiny else "bf16")
    from oodlab.models import load_model

    size = load_model(a.model).identity["preprocess"]["size"][0]
    source_size = size if tiny else 256  # img2dataset's default image size for the big models
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_images(shards, n, source_size)
        bare, count = bare_forward(a.model, precision, shards, a.batch_size)
        piped = pipeline(a.model, precision, shards, a.batch_size, a.workers)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"{a.model} ({precision}), {count} JPEGs of {source_size} px -> {size} px, batch {a.batch_size}, "
          f"{a.workers} decoding worker(s)")
    print(f"{'':<38}{'img/s':>10}")
    print(f"{'bare forward (preprocessed in memory)':<38}{bare:>10.0f}")
    print(f"{'oodlab embed (shards -> store)':<38}{piped:>10.0f}")
    print(f"pipeline / bare forward = {piped / bare:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
