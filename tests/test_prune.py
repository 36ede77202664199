"""Pruning rules against independent brute-force numpy computations on small random stores."""

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from oodlab.cli import app
from oodlab.embeddings import store as st
from oodlab.similarity.neighbors import neighbors
from oodlab.subsets.prune import prune_aligned, prune_far, prune_near, prune_random
from oodlab.utils.errors import InputError
from tests.helpers import unit_rows

D = 32


def _store(path, parts, prefix):
    keys = []
    for i, emb in enumerate(parts):
        k = [f"{prefix}{i}_{j:03d}" for j in range(len(emb))]
        keys += k
        st.write_part(path, i, len(parts), image=emb, metadata=pa.table({"image_path": k}), record={"source": "test"})
    st.write_sidecar(path, model=None, records=[st.read_part_record(path, i, len(parts)) for i in range(len(parts))])
    return np.array(keys)


def _dyadic(dims):
    v = np.zeros(D, np.float32)
    v[list(dims)] = 0.5  # four entries of 0.5: exactly unit, exact in float16, exact dot products
    return v


@pytest.fixture(scope="module")
def prune_inputs(tmp_path_factory):
    """(root, train keys, float64 eval x train similarities per eval set, aligned margins per
    train row): a train store with tied rows and a planted exact tie, eval sets a and b, a
    reference set, and their ``neighbors`` output under root / "nb"."""
    root = tmp_path_factory.mktemp("prune")
    rng = np.random.default_rng(3)
    parts = [unit_rows(rng, n, D) for n in (150, 97, 120)]
    parts[1][5] = parts[0][7]  # identical rows: tied scores across parts
    parts[2][9] = parts[0][7]
    parts[2][10] = parts[1][40]
    u, r = _dyadic([0, 1, 2, 3]), _dyadic([0, 1, 2, 4])  # u . r = 0.75 exactly
    parts[1][20] = r  # s(u, row) == t_u exactly: must NOT be removed
    parts[2][30] = u  # s(u, row) = 1 > t_u: removed
    train_keys = _store(root / "train", parts, "t")
    ev_a = unit_rows(rng, 30, D)
    ev_a[0] = u
    _store(root / "a", [ev_a], "a")
    _store(root / "b", [unit_rows(rng, 20, D)], "b")
    ref = unit_rows(rng, 60, D)
    ref[0] = r  # u's nearest reference row (random rows are far below 0.75 in 32 dims)
    _store(root / "ref", [ref], "r")
    neighbors(root / "train", {"a": root / "a", "b": root / "b"}, root / "nb", k=3, reference_stores={"ref": root / "ref"})
    load = lambda name: st.EmbeddingStore(root / name).read_all()[0].astype(np.float64)  # noqa: E731
    T, A, B, R = (load(n) for n in ("train", "a", "b", "ref"))
    sims = {"a": A @ T.T, "b": B @ T.T}
    thresholds = {"a": (A @ R.T).max(1), "b": (B @ R.T).max(1)}
    margins = {n: (sims[n] - thresholds[n][:, None]).max(0) for n in sims}
    tie_row = int(np.flatnonzero(train_keys == "t1_020")[0])
    assert margins["a"][tie_row] == 0.0 and margins["b"][tie_row] <= 0.0  # the planted exact tie
    return root, train_keys, sims, margins


def _keys(path):
    return pq.read_table(path).column("key").to_pylist()


def _score32(sims, names):
    return np.max([sims[n].max(0).astype(np.float32) for n in names], axis=0)


def _first_tie(score, order):
    """Position in ``order`` (sorted scores) of a tie group's first member, to cut inside a tie."""
    s = score[order]
    for i in range(len(s) - 1):
        if s[i] == s[i + 1]:
            return i
    raise AssertionError("no tie planted")


@pytest.mark.parametrize("rule", ["near", "far"])
def test_keep_n_matches_sorted_scores_with_training_order_ties(prune_inputs, tmp_path, rule):
    root, train_keys, sims, _ = prune_inputs
    score = _score32(sims, ["a", "b"])
    rows = np.arange(len(score))
    sign = 1 if rule == "near" else -1
    order = np.lexsort((rows, sign * score.astype(np.float64)))  # by score, ties by training order
    n = _first_tie(score, order) + 1  # the cut separates two tied rows
    fn = prune_near if rule == "near" else prune_far
    manifest = fn(root / "nb", tmp_path / rule, keep=n)
    kept = _keys(tmp_path / rule / "kept.parquet")
    assert kept == train_keys[np.sort(order[:n])].tolist()  # set, training order, tie-break
    removed = pq.read_table(tmp_path / rule / "removed.parquet").to_pandas()
    assert removed["key"].tolist() == train_keys[np.sort(order[n:])].tolist()
    np.testing.assert_array_equal(removed["score"].to_numpy(), score[np.sort(order[n:])])
    assert manifest["counts"] == {"pool_rows": 367, "considered": 367, "kept": n, "removed": 367 - n}
    assert manifest["parameters"]["rule"] == rule


def test_near_threshold_single_eval_and_argmax(prune_inputs, tmp_path):
    root, train_keys, sims, _ = prune_inputs
    score = _score32(sims, ["b"])
    t = float(np.sort(score)[200])  # a value in the data: score == t is kept
    prune_near(root / "nb", tmp_path / "o", eval_sets=["b"], threshold=t)
    assert _keys(tmp_path / "o" / "removed.parquet") == train_keys[score > t].tolist()
    kept = pq.read_table(tmp_path / "o" / "kept.parquet").to_pandas()
    assert kept["key"].tolist() == train_keys[score <= t].tolist()
    bkeys = np.array([f"b0_{j:03d}" for j in range(20)])
    assert kept["eval_key"].tolist() == bkeys[sims["b"].argmax(0)[score <= t]].tolist()
    assert set(kept["eval_set"]) == {"b"}


def test_far_threshold(prune_inputs, tmp_path):
    root, train_keys, sims, _ = prune_inputs
    score = _score32(sims, ["a", "b"])
    t = float(np.median(score))
    prune_far(root / "nb", tmp_path / "o", threshold=t)
    assert _keys(tmp_path / "o" / "kept.parquet") == train_keys[score >= t].tolist()


def test_aligned_exact_with_planted_tie_and_union_counts(prune_inputs, tmp_path):
    root, train_keys, _, margins = prune_inputs
    manifest = prune_aligned(root / "nb", tmp_path / "o")
    flag = {n: margins[n] > 0 for n in margins}
    union = flag["a"] | flag["b"]
    assert _keys(tmp_path / "o" / "removed.parquet") == train_keys[union].tolist()
    assert _keys(tmp_path / "o" / "kept.parquet") == train_keys[~union].tolist()
    assert "t1_020" in _keys(tmp_path / "o" / "kept.parquet")  # s == t exactly: kept
    assert "t2_030" in _keys(tmp_path / "o" / "removed.parquet")
    assert manifest["counts"]["flagged"] == {"a": int(flag["a"].sum()), "b": int(flag["b"].sum()), "union": int(union.sum())}
    assert 0 < flag["a"].sum() < union.sum()  # the union is larger than one set: a real test of it
    table = pd.read_csv(tmp_path / "o" / "counts.csv")
    assert table["flagged"].tolist() == [flag["a"].sum(), flag["b"].sum(), union.sum()]
    assert "union (combined)" in (tmp_path / "o" / "counts.md").read_text()
    removed = pq.read_table(tmp_path / "o" / "removed.parquet").to_pandas()
    np.testing.assert_allclose(removed["score"], np.maximum(margins["a"], margins["b"])[union], atol=1e-9)
    # one eval set alone
    prune_aligned(root / "nb", tmp_path / "a", eval_sets=["a"])
    assert _keys(tmp_path / "a" / "removed.parquet") == train_keys[flag["a"]].tolist()


def test_aligned_refuses_folder_without_margins(prune_inputs, tmp_path):
    root, *_ = prune_inputs
    import shutil

    shutil.copytree(root / "nb", tmp_path / "nb")
    for p in (tmp_path / "nb" / "train").glob("*.parquet"):
        t = pq.read_table(p)
        pq.write_table(t.select([c for c in t.column_names if not c.startswith("margin")]), p)
    with pytest.raises(InputError, match="margin__a.*--reference-store"):
        prune_aligned(tmp_path / "nb", tmp_path / "o", eval_sets=["a"])
    with pytest.raises(InputError, match="no column"):
        prune_near(root / "nb", tmp_path / "o", eval_sets=["zzz"], keep=3)
    with pytest.raises(InputError, match="exactly one"):
        prune_near(root / "nb", tmp_path / "o", keep=3, threshold=0.5)


def _priority(key, seed):
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53


def test_random_is_uniform_seeded_and_matches_the_documented_draw(tmp_path):
    keys = [f"{s:05d}{i:04d}" for s in range(20) for i in range(1000)]  # 20 "shards" of 1000
    (tmp_path / "pool.txt").write_text("\n".join(keys) + "\n")
    m1 = prune_random(tmp_path / "r1", keys=tmp_path / "pool.txt", keep=5000, seed=7)
    kept = _keys(tmp_path / "r1" / "kept.parquet")
    expected = sorted(range(len(keys)), key=lambda j: (_priority(keys[j], 7), j))[:5000]
    assert kept == [keys[j] for j in sorted(expected)]
    assert m1["counts"]["kept"] == 5000 and m1["counts"]["removed"] == 15000
    per_shard = np.bincount([int(k[:5]) for k in kept], minlength=20)
    chi2 = ((per_shard - 250) ** 2 / 250).sum()
    assert chi2 < 45, per_shard  # 19 dof: p ~ 0.001; the reference code's truncation gives 5 full shards
    prune_random(tmp_path / "r2", keys=tmp_path / "pool.txt", keep=5000, seed=7)
    assert (tmp_path / "r1" / "kept.parquet").read_bytes() == (tmp_path / "r2" / "kept.parquet").read_bytes()
    prune_random(tmp_path / "r3", keys=tmp_path / "pool.txt", keep=5000, seed=8)
    assert _keys(tmp_path / "r3" / "kept.parquet") != kept
    # --like: the size of another key list; nested for one seed
    m4 = prune_random(tmp_path / "r4", keys=tmp_path / "pool.txt", like=tmp_path / "r1" / "removed.parquet", seed=7)
    assert m4["counts"]["kept"] == 15000 and set(kept) <= set(_keys(tmp_path / "r4" / "kept.parquet"))
    with pytest.raises(InputError, match="exceeds"):
        prune_random(tmp_path / "r5", keys=tmp_path / "pool.txt", keep=20001)


def test_rules_chain_with_keep_from(prune_inputs, tmp_path):
    root, train_keys, sims, _ = prune_inputs
    prune_near(root / "nb", tmp_path / "near", keep=200)
    first = _keys(tmp_path / "near" / "kept.parquet")
    m = prune_random(tmp_path / "rand", neighbors=root / "nb", keep=50, seed=1, keep_from=tmp_path / "near" / "kept.parquet")
    second = _keys(tmp_path / "rand" / "kept.parquet")
    assert len(second) == 50 and set(second) <= set(first)
    assert m["counts"]["considered"] == 200 and m["counts"]["removed"] == 150
    # far on the near-kept keys = the 120 most similar among them (independent: pandas)
    score = pd.Series(_score32(sims, ["a", "b"]), index=train_keys)
    prune_far(root / "nb", tmp_path / "far", keep=120, keep_from=tmp_path / "near" / "kept.parquet")
    sub = score[first].reset_index(drop=False)
    sub["pos"] = np.arange(len(sub))
    top = sub.sort_values([0, "pos"], ascending=[False, True]).head(120)
    assert _keys(tmp_path / "far" / "kept.parquet") == sub.loc[sorted(top["pos"]), "index"].tolist()


def test_cli_prune(prune_inputs, tmp_path):
    root, train_keys, _, margins = prune_inputs
    runner = CliRunner()
    result = runner.invoke(app, ["prune", "aligned", "--neighbors", str(root / "nb"), "--out", str(tmp_path / "o"),
                                 "--eval-set", "a"])
    assert result.exit_code == 0, result.output
    assert _keys(tmp_path / "o" / "removed.parquet") == train_keys[margins["a"] > 0].tolist()
    result = runner.invoke(app, ["prune", "random", "--store", str(root / "train"), "--out", str(tmp_path / "r"), "--keep", "10",
                                 "--seed", "3"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 10 and manifest["parameters"]["seed"] == 3
