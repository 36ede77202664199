"""Semantic dedup against planted duplicates and a brute-force greedy written here in plain numpy."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from oodlab.cli import app
from oodlab.embeddings import store as st
from oodlab.subsets.clusters import train_centroids
from oodlab.subsets.dedup import dedup, dedup_quality
from oodlab.subsets.greedy import dedup_ordered

D = 48
EPS = 0.05


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _write_store(path, emb, groups, n_parts=3):
    keys = [f"k{i:04d}" for i in range(len(emb))]
    cuts = np.linspace(0, len(emb), n_parts + 1).astype(int)
    for p in range(n_parts):
        sl = slice(cuts[p], cuts[p + 1])
        meta = pa.table({"image_path": keys[sl], "duplicate_group": pa.array(groups[sl], pa.int64())})
        st.write_part(path, p, n_parts, image=emb[sl], metadata=meta, record={"source": "test"})
    st.write_sidecar(path, model=None, records=[st.read_part_record(path, p, n_parts) for p in range(n_parts)])
    return np.array(keys)


def _planted(rng, n_clusters=5, per_cluster=60, n_groups=25, chain=False):
    """Far-apart clusters of spread points, plus duplicate groups (copies within cosine ~0.9998).

    With ``chain``, each cluster gets a chain a ~ b ~ c (cos 0.970) with a !~ c (cos 0.882),
    ordered a, b, c by similarity to the cluster's centre."""
    centres = _unit(rng.standard_normal((n_clusters, D)))
    points, groups, truth = [], [], []
    for c in range(n_clusters):
        x = _unit(centres[c] + _unit(rng.standard_normal((per_cluster, D))))  # cos to centre ~0.7
        points.append(x)
        groups += [None] * per_cluster
        truth += [c] * per_cluster
    emb = np.concatenate(points)
    group_id = 0
    for g in range(n_groups):
        src = rng.integers(len(emb))
        copies = _unit(emb[src] + 0.02 * _unit(rng.standard_normal((rng.integers(1, 4), D))))
        emb = np.concatenate([emb, copies])
        groups[src] = group_id if groups[src] is None else groups[src]
        groups += [groups[src]] * len(copies)
        truth += [truth[src]] * len(copies)
        group_id += 1
    if chain:
        for c in range(n_clusters):
            b = emb[truth.index(c)]
            w = _unit(centres[c] - (centres[c] @ b) * b)
            trio = _unit(np.stack([b + 0.25 * w, b, b - 0.25 * w]))
            emb = np.concatenate([emb, trio])
            groups += [None] * 3
            truth += [c] * 3
    perm = rng.permutation(len(emb))  # training order unrelated to clusters and groups
    return emb[perm].astype(np.float32), [groups[i] for i in perm], np.array(truth)[perm]


def _brute(E, centroids, eps, rule):
    """Independent reference: assignment, order and greedy rule written directly (float64)."""
    cluster = np.argmax(E @ centroids.T, axis=1)
    csim = (E @ centroids.T)[np.arange(len(E)), cluster]
    kept = np.zeros(len(E), bool)
    cause = np.full(len(E), -1)
    for c in np.unique(cluster):
        members = [i for i in np.flatnonzero(cluster == c)]
        members.sort(key=lambda i: (-csim[i], i))
        done = []
        for j in members:
            pool = [i for i in done if kept[i]] if rule == "greedy" else done
            sims = [float(E[i] @ E[j]) for i in pool]
            kept[j] = not sims or max(sims) <= 1 - eps
            if sims and not kept[j]:
                cause[j] = pool[int(np.argmax(sims))]
            done.append(j)
    return cluster, kept, cause


def _stored(path):
    return st.EmbeddingStore(path).read_all()[0].astype(np.float64)


def _read(out):
    kept = pq.read_table(out / "kept.parquet").to_pandas()
    removed = pq.read_table(out / "removed.parquet").to_pandas()
    return kept, removed


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup")
    rng = np.random.default_rng(11)
    emb, groups, truth = _planted(rng)
    keys = _write_store(root / "clean", emb, groups)
    emb2, groups2, truth2 = _planted(np.random.default_rng(12), chain=True, n_groups=0)
    keys2 = _write_store(root / "chain", emb2, groups2)
    return root, (keys, groups, truth), (keys2, truth2)


@pytest.mark.parametrize("blocks", [dict(), dict(block_rows=7, group_rows=40, chunk_rows=33)])
def test_greedy_equals_brute_force_and_finds_all_planted(planted, tmp_path, blocks):
    root, (keys, groups, truth), _ = planted
    manifest = dedup(root / "clean", tmp_path / "o", eps=EPS, clusters=5, seed=1, **blocks)
    E = _stored(root / "clean")
    centroids = np.load(tmp_path / "o" / "centroids.npy").astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-6)
    cluster, kept_ref, cause_ref = _brute(E, centroids, EPS, "greedy")
    kept, removed = _read(tmp_path / "o")
    assert kept["key"].tolist() == keys[kept_ref].tolist()  # same set, training order
    assert removed["key"].tolist() == keys[~kept_ref].tolist()
    assert removed["cause_key"].tolist() == keys[cause_ref[~kept_ref]].tolist()
    assigned = np.empty(len(keys), int)
    for table in (kept, removed):
        assigned[np.searchsorted(keys, table["key"])] = table["cluster"]
    np.testing.assert_array_equal(assigned, cluster)  # nearest unit centroid, computed here in float64
    # every removed item is a planted copy, and every group keeps exactly one member
    q = manifest["counts"]["quality"]
    assert q["precision"] == 1.0 and q["recall"] == 1.0 and q["pair_precision"] == 1.0
    n_copies = sum(g is not None for g in groups) - len({g for g in groups if g is not None})
    assert manifest["counts"]["removed"] == n_copies == q["removable"]


def test_all_earlier_rule_overprunes_chains_like_the_reference(planted, tmp_path):
    root, _, (keys, truth) = planted
    E = _stored(root / "chain")
    for rule in ("greedy", "all-earlier"):
        dedup(root / "chain", tmp_path / rule, eps=EPS, clusters=5, seed=0, rule=rule)
        centroids = np.load(tmp_path / rule / "centroids.npy").astype(np.float64)
        _, kept_ref, _ = _brute(E, centroids, EPS, rule)
        kept, _ = _read(tmp_path / rule)
        assert kept["key"].tolist() == keys[kept_ref].tolist()
    greedy = set(_read(tmp_path / "greedy")[0]["key"])
    paper = set(_read(tmp_path / "all-earlier")[0]["key"])
    assert paper < greedy and len(greedy) - len(paper) == 5  # the c of each chain


def test_dedup_ordered_blocks_agree():
    rng = np.random.default_rng(5)
    x = _unit(rng.standard_normal((40, 8)))
    x = np.repeat(x, 3, axis=0) + 0.05 * rng.standard_normal((120, 8))
    x = _unit(x).astype(np.float32)
    ref = dedup_ordered(x, 0.1, block_rows=1000)
    for b in (1, 5, 17):
        got = dedup_ordered(x, 0.1, block_rows=b)
        assert (got.kept == ref.kept).all() and (got.cause == ref.cause).all()


def _sizes(x, centroids):
    """Cluster sizes int [k] of a brute-force float64 nearest-centroid assignment (ties -> lower)."""
    cluster = np.argmax(x.astype(np.float64) @ centroids.astype(np.float64).T, axis=1)
    return np.bincount(cluster, minlength=len(centroids))


def _lloyd_without_reseeding(x, centroids, iterations):
    """Spherical Lloyd iterations in float64 as faiss runs them minus ``split_clusters``: the
    centroid of an empty cluster is the zero vector (faiss's ``compute_centroids``)."""
    x, c = x.astype(np.float64), centroids.astype(np.float64)
    for _ in range(iterations):
        cluster = np.argmax(x @ c.T, axis=1)
        c = np.zeros_like(c)
        for j in np.unique(cluster):
            c[j] = _unit(x[cluster == j].sum(axis=0))
    return c


def test_faiss_reseeds_empty_clusters():
    rng = np.random.default_rng(0)
    k = 8
    points = _unit(rng.standard_normal((12, 16)))  # 12 >= k distinct points, 20 copies each
    sample = np.repeat(points, 20, axis=0)[rng.permutation(240)].astype(np.float32)
    init = train_centroids(sample, k, iterations=0, seed=1)  # faiss's initialisation: k sampled rows
    assert np.allclose((init.astype(np.float64) @ points.T).max(axis=1), 1, atol=1e-6)
    # some sampled rows are copies of one point: equal centroids, of which all but the first
    # (ties -> lower index) start empty and stay empty unless something re-seeds them
    assert len(np.unique(init.round(5), axis=0)) < k
    assert (_sizes(sample, _lloyd_without_reseeding(sample, init, 10)) == 0).any()

    trained = train_centroids(sample, k, iterations=10, seed=1)
    assert (_sizes(sample, trained) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(trained.astype(np.float64), axis=1), 1, atol=1e-6)


def test_fewer_distinct_points_than_clusters_leaves_finite_unit_centroids():
    rng = np.random.default_rng(0)
    points = _unit(rng.standard_normal((5, 16)))
    sample = np.repeat(points, 40, axis=0).astype(np.float32)
    c = train_centroids(sample, 8, iterations=10, seed=1)  # 8 clusters, 5 distinct points
    assert np.isfinite(c).all()
    np.testing.assert_allclose(np.linalg.norm(c.astype(np.float64), axis=1), 1, atol=1e-6)
    assert np.count_nonzero(_sizes(sample, c)) == 5  # re-seeding gave every point its own cluster


def test_keep_from_and_determinism(planted, tmp_path):
    root, (keys, _, _), _ = planted
    subset = keys[::2]
    pq.write_table(pa.table({"key": subset}), tmp_path / "keep.parquet")
    m = dedup(root / "clean", tmp_path / "a", eps=EPS, clusters=5, keep_from=tmp_path / "keep.parquet")
    kept, removed = _read(tmp_path / "a")
    assert set(kept["key"]) | set(removed["key"]) == set(subset) and m["counts"]["considered"] == len(subset)
    dedup(root / "clean", tmp_path / "b", eps=EPS, clusters=5, keep_from=tmp_path / "keep.parquet")
    for name in ("kept.parquet", "removed.parquet", "centroids.npy", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_quality_formula(planted, tmp_path):
    root, (keys, groups, _), _ = planted
    g = pd.Series(groups, index=keys)
    grouped = g.dropna()
    first_group = grouped.index[grouped == grouped.iloc[0]].tolist()  # a group of >= 2
    lone = g.index[g.isna()][:3].tolist()
    removed = first_group + lone  # the whole group (one too many) plus three non-duplicates
    out = tmp_path / "q"
    out.mkdir()
    pq.write_table(pa.table({"key": keys[~np.isin(keys, removed)].tolist()}), out / "kept.parquet")
    pq.write_table(pa.table({"key": removed, "cause_key": [first_group[0]] * len(removed)}), out / "removed.parquet")
    q = dedup_quality(out, root / "clean")
    sizes = grouped.groupby(grouped).size()
    assert q["precision"] == len(first_group) / len(removed)
    assert q["pair_precision"] == len(first_group) / len(removed)  # causes in the same group
    assert q["recall"] == (len(first_group) - 1) / (sizes - 1).sum()


def test_tiny_world_removes_its_planted_copies_as_the_brute_force_greedy_does(tiny_world, tmp_path):
    from oodlab.embeddings.embed import embed

    embed([tiny_world / "pool"], tmp_path / "store", model="tiny-vit", workers=0)
    # A random-init tiny-vit puts pool images close together (unrelated pairs reach cosine
    # 0.999+) and planted copies closer still: eps is set from the world's ground truth just wide
    # enough to join every planted group (and then also removes look-alikes)
    E0, keys0 = _stored(tmp_path / "store"), st.EmbeddingStore(tmp_path / "store").read_all()[1]
    gt = pd.read_parquet(tiny_world / "ground_truth.parquet")
    g = gt[gt["dataset"] == "pool"].set_index("key")["duplicate_group"].reindex(keys0).to_numpy()
    lowest = min(float((E0[g == v] @ E0[g == v].T).min()) for v in pd.unique(g[~pd.isna(g)]))
    eps = 1 - lowest + 1e-5
    manifest = dedup(tmp_path / "store", tmp_path / "dd", eps=eps, clusters=4)
    E, keys = _stored(tmp_path / "store"), st.EmbeddingStore(tmp_path / "store").read_all()[1]
    centroids = np.load(tmp_path / "dd" / "centroids.npy").astype(np.float64)
    _, kept_ref, cause_ref = _brute(E, centroids, eps, "greedy")
    kept, removed = _read(tmp_path / "dd")
    assert (~kept_ref).sum() > 0
    assert removed["key"].tolist() == keys[~kept_ref].tolist()
    assert removed["cause_key"].tolist() == keys[cause_ref[~kept_ref]].tolist()
    assert kept["key"].tolist() == keys[kept_ref].tolist()

    # quality against the world's ground truth: all but one member of each planted group removed
    truth = pd.read_parquet(tiny_world / "ground_truth.parquet")
    group = truth[truth["dataset"] == "pool"].set_index("key")["duplicate_group"].reindex(keys).to_numpy()
    planted = ~pd.isna(group)
    sizes = pd.Series(group[planted]).value_counts()
    removed_per_group = pd.Series(group[planted & ~kept_ref]).value_counts()
    removable = int((sizes - 1).sum())
    assert removable > 0
    recall = np.minimum(removed_per_group, sizes[removed_per_group.index] - 1).sum() / removable
    assert recall == 1.0
    q = manifest["counts"]["quality"]
    assert (q["removed"], q["removable"]) == (int((~kept_ref).sum()), removable)
    assert q["recall"] == pytest.approx(recall)
    assert q["precision"] == pytest.approx(planted[~kept_ref].mean())
    print(f"tiny world (random-init tiny-vit), eps={eps}: {json.dumps(q)}")


def test_cli_dedup(planted, tmp_path):
    root, (keys, _, _), _ = planted
    result = CliRunner().invoke(app, ["dedup", "--store", str(root / "clean"), "--eps", str(EPS), "--out", str(tmp_path / "o"),
                                      "--clusters", "5", "--rule", "all-earlier"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["parameters"]["rule"] == "all-earlier" and manifest["counts"]["quality"]["recall"] == 1.0
