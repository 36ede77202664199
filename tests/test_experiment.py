"""``oodlab experiment similarity`` on the tiny world: training-set sizes checked against a numpy
computation of similarity-aligned pruning on the stored embeddings; two seeds per row, two runs
side by side; every seed's accuracy against open_clip's zero-shot on its checkpoint; a re-run
trains nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from oodlab.embeddings.embed import embed
from oodlab.embeddings.store import EmbeddingStore
from oodlab.experiments.similarity import experiment_similarity
from oodlab.similarity.neighbors import neighbors
from tests.helpers import zero_shot_reference

EVALS = ("val", "sketch")


@pytest.fixture(scope="module")
def setup(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("x")
    sources = {"pool": tiny_world / "pool", "imagenet-train": tiny_world / "imagenet-train"}
    sources.update({name: tiny_world / "eval" / name for name in EVALS})
    for name, source in sources.items():  # an untrained model: a fixed random embedding space
        embed([source], root / "stores" / name, model="tiny-vit", workers=1)
    nb = root / "neighbors"
    neighbors(root / "stores" / "pool", {n: root / "stores" / n for n in EVALS}, nb, k=5,
              reference_stores={"imagenet-train": root / "stores" / "imagenet-train"})
    out = root / "experiment"
    manifest = experiment_similarity(tiny_world / "pool", nb, {n: tiny_world / "eval" / n for n in EVALS}, out,
                                     training_sets=["full", "combined-pruned", "random"], epochs=1, batch_size=32, lr=1e-3,
                                     per_shard=100, parallel=2, seeds=2)
    return root, out, manifest


def _aligned_removed(root: Path) -> int:
    """Pool samples j with s(i, j) > t_i for some eval sample i, t_i = i's best similarity to
    ImageNet-train: brute force in float64 on the stored embeddings."""
    pool = EmbeddingStore(root / "stores" / "pool").read_all(dtype=np.float64)[0]
    ref = EmbeddingStore(root / "stores" / "imagenet-train").read_all(dtype=np.float64)[0]
    removed = np.zeros(len(pool), bool)
    for name in EVALS:
        q = EmbeddingStore(root / "stores" / name).read_all(dtype=np.float64)[0]
        t = (q @ ref.T).max(axis=1)
        removed |= ((q @ pool.T) > t[:, None]).any(axis=0)
    return int(removed.sum())


def test_table_sizes_match_brute_force_pruning(setup):
    root, out, manifest = setup
    rows = {r["training_set"]: r for r in csv.DictReader((out / "table.csv").open())}
    assert list(rows) == ["full", "combined-pruned", "random"]
    assert {(r["training_set"], r["eval_set"]) for r in csv.DictReader((out / "table.csv").open())} == {
        (t, e) for t in rows for e in EVALS}
    n = EmbeddingStore(root / "stores" / "pool").count
    removed = _aligned_removed(root)
    assert 0 < removed < n
    assert (int(rows["full"]["size"]), int(rows["full"]["removed"])) == (n, 0)
    assert (int(rows["combined-pruned"]["size"]), int(rows["combined-pruned"]["removed"])) == (n - removed, removed)
    assert int(rows["random"]["size"]) == n - removed
    table = (out / "table.md").read_text()
    assert "| Dataset | Size | Val | Sketch |" in table and f"| full | {n:,} |" in table
    assert f"| - combined-pruned | -{removed:,} |" in table


def _runs(out: Path) -> dict[tuple[str, str], dict]:
    results = json.loads((out / "results.json").read_text())
    return {(r["training_set"], s): run for r in results["rows"] for s, run in r["seeds"].items()}


def test_every_seeds_accuracy_equals_a_direct_open_clip_zero_shot(setup, tiny_world):
    """Every row's top-1 of every seed on every eval set against open_clip run here on that
    seed's checkpoint; the two seeds are two different models."""
    _, out, manifest = setup
    assert [row["training_set"] for row in manifest["table"]] == ["full", "combined-pruned", "random"]
    runs = _runs(out)
    assert sorted({s for _, s in runs}) == ["0", "1"]
    for row in manifest["table"]:
        name_row = row["training_set"]
        weights = [(out / "runs" / name_row / f"seed-{s}" / "checkpoints" / "epoch_1.pt").read_bytes() for s in (0, 1)]
        assert weights[0] != weights[1]
        for i, s in enumerate(("0", "1")):
            checkpoint = Path(runs[(name_row, s)]["checkpoint"])
            assert checkpoint.stem == "epoch_1" and checkpoint.parent.parent.name == f"seed-{s}"
            for name in EVALS:
                ref = zero_shot_reference(tiny_world, checkpoint, f"eval/{name}")
                top2 = np.sort(ref["logits"], axis=1)[:, -2:]
                near_ties = int(((top2[:, 1] - top2[:, 0]) <= 1e-5).sum())  # float noise may reorder these
                expected = (ref["logits"].argmax(axis=1) == ref["labels"]).mean()
                got = row["top1_per_seed"][name][i]
                print(f"{name_row} seed {s} {name}: top1 {got:.4f}, direct {expected:.4f}, "
                      f"{near_ties} near-ties of {len(ref['labels'])}")
                assert abs(got - expected) <= near_ties / len(ref["labels"]) + 1e-12
            assert row["top1"][name]["estimate"] == pytest.approx(np.mean(row["top1_per_seed"][name]))
    assert (out / "accuracy" / "val").is_dir()
    assert (out / "claims.md").is_file() and "random" in (out / "table.md").read_text()


def test_rerun_trains_nothing(setup, tiny_world):
    root, out, manifest = setup
    runs = {key: Path(run["run"]) for key, run in _runs(out).items()}
    before = {name: (run / "checkpoints" / "epoch_1.pt").stat().st_mtime_ns for name, run in runs.items()}
    again = experiment_similarity(tiny_world / "pool", root / "neighbors",
                                  {n: tiny_world / "eval" / n for n in EVALS}, out,
                                  training_sets=["full", "combined-pruned", "random"], epochs=1, batch_size=32, lr=1e-3,
                                  per_shard=100, parallel=2, seeds=2)
    assert {name: (run / "checkpoints" / "epoch_1.pt").stat().st_mtime_ns for name, run in runs.items()} == before
    assert [r["top1"] for r in again["table"]] == [r["top1"] for r in manifest["table"]]
