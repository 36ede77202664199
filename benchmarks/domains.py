"""Domain predictions: ``oodlab domains predict`` against reading the store alone, side by side.

Builds a clip-retrieval embedding folder (float16 rows, metadata parquet per part; no sidecar,
as LAION's released embeddings) of random unit rows, a 3-class head with random weights and
thresholds, then times, best of 3 each, in this process:

- read: streaming every chunk of the store with its keys (``EmbeddingStore.iter_chunks``);
- predict: ``domains_predict`` with thresholds, into a fresh folder each time.

Target (issue 12): predict within 1.5x of the read.

Usage:  python benchmarks/domains.py [--rows 2000000] [--dim 512] [--parts 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def build_store(root: Path, rows: int, dim: int, parts: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    per = -(-rows // parts)
    for p in range(parts):
        n = min(per, rows - p * per)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(root / "img_emb" / f"img_emb_{p}.npy", x.astype(np.float16))
        keys = [f"{p:05d}{i:04d}" if i < 10_000 else f"{p:05d}{i}" for i in range(n)]
        pq.write_table(pa.table({"image_path": keys}), root / "metadata" / f"metadata_{p}.parquet")


def build_head(root: Path, dim: int) -> None:
    rng = np.random.default_rng(1)
    (root / "head").mkdir(parents=True)
    (root / "head" / "head.json").write_text(json.dumps({
        "task": "3-class", "classes": ["natural", "rendition", "ambiguous"], "C": 1.0,
        "weights": (rng.standard_normal((3, dim)) * 4).tolist(), "bias": [1.0, -1.0, -2.0], "model": None}))
    (root / "cal").mkdir()
    (root / "cal" / "thresholds.json").write_text(json.dumps({
        "task": "3-class", "target": 0.98, "confidence": 0.95,
        "classes": {"natural": {"threshold": 0.9}, "rendition": {"threshold": 0.95}}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--parts", type=int, default=8)
    a = ap.parse_args()

    from oodlab.domains.predict import domains_predict
    from oodlab.embeddings.store import EmbeddingStore

    print(f"machine: {platform.processor() or platform.machine()}; store {a.rows:,} x {a.dim} float16 in {a.parts} parts")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_store(root / "store", a.rows, a.dim, a.parts)
        build_head(root, a.dim)
        times = {"read": [], "predict": []}
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(len(c.embeddings) for c in EmbeddingStore(root / "store").iter_chunks(65536))
            times["read"].append(time.perf_counter() - t0)
            shutil.rmtree(root / "pred", ignore_errors=True)
            t0 = time.perf_counter()
            domains_predict(root / "store", root / "head", root / "pred", thresholds=root / "cal")
            times["predict"].append(time.perf_counter() - t0)
        read, pred = min(times["read"]), min(times["predict"])
        print(f"read     {read:7.2f} s  ({n / read:,.0f} rows/s)")
        print(f"predict  {pred:7.2f} s  ({n / pred:,.0f} rows/s)")
        print(f"predict / read: {pred / read:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
