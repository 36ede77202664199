"""The faiss index against numpy brute force: results, the reported recall, the default factory."""

import logging
import math
import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from oodlab.cli import app
from oodlab.embeddings import store as st
from oodlab.similarity import factory
from oodlab.similarity import index as ix
from oodlab.utils.atomic import read_json
from oodlab.utils.errors import IncompatibleError, InputError
from tests.helpers import unit_rows

MODEL = {"architecture": "tiny-vit", "weights": None, "preprocess": {"size": 64}}
OTHER = {"architecture": "tiny-rn", "weights": None, "preprocess": {"size": 64}}
GiB = 2**30


def _store(path, parts, prefix, model=MODEL):
    for i, emb in enumerate(parts):
        keys = [f"{prefix}{i}_{j}" for j in range(len(emb))]
        st.write_part(path, i, len(parts), image=emb, metadata=pa.table({"image_path": keys}))
    st.write_sidecar(path, model=model, records=[st.read_part_record(path, i, len(parts)) for i in range(len(parts))])
    return path


def _stored(path):
    """(float64 stored rows, keys) read straight from the .npy/.parquet files."""
    s = st.EmbeddingStore(path)
    emb = np.concatenate([np.load(p.img_path).astype(np.float64) for p in s.parts])
    keys = np.concatenate([pq.read_table(p.meta_path).column("image_path").to_numpy(zero_copy_only=False) for p in s.parts])
    return emb, keys


def _brute(Q, T, k):
    """float64 top-k (ties -> lower index): (indices [q, k], scores [q, k])."""
    S = Q @ T.T
    order = np.lexsort((np.broadcast_to(np.arange(T.shape[0]), S.shape), -S), axis=1)[:, :k]
    return order, np.take_along_axis(S, order, 1)


def _recall(ann, exact):
    return np.array([len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(ann, exact)])


def _clusters(rng, n, d=32, n_clusters=20, spread=0.5):
    centers = unit_rows(rng, n_clusters, d)
    x = centers[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, d)) / math.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), centers


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("OODLAB_QUIET", "1")


# -- default factory ---------------------------------------------------------------------------
def _expected_factory(n, d, budget):
    """The documented rule, written out independently."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    if n < 50_000 and 4 * n * d <= budget:
        return "Flat"
    if n < 1_000_000 and n * (4 * d + 1.1 * 2 * 32 * 4) <= budget:
        return "HNSW32"
    if n * (4 * d + 8) + 4 * nlist * d <= budget:
        return f"IVF{nlist},Flat"
    for m in (64, 48, 32, 24, 16, 12, 8, 4):
        if d % m == 0 and n * (m + 8) + 4 * nlist * d + 4 * 256 * d <= budget:
            return f"IVF{nlist},PQ{m}"
    return None


@pytest.mark.parametrize("n, d, budget, expected", [
    (10_000, 512, 8 * GiB, "Flat"),
    (49_999, 512, 8 * GiB, "Flat"),
    (50_000, 512, 8 * GiB, "HNSW32"),
    (999_999, 512, 8 * GiB, "HNSW32"),
    (1_000_000, 512, 8 * GiB, "IVF4096,Flat"),  # 4 sqrt(1e6) = 4000 -> 4096
    (500_000, 512, GiB // 2, "IVF2048,PQ64"),  # HNSW (1.2 GB) and IVF,Flat (1.0 GB) do not fit
    (5_000_000, 512, 64 * GiB, "IVF8192,Flat"),  # 4 sqrt(5e6) = 8944 -> 8192
    (5_000_000, 100, GiB // 16, "IVF8192,PQ4"),  # only m = 4 divides 100
    (400_000_000, 768, 32 * GiB, "IVF65536,PQ64"),
])
def test_default_factory_follows_the_documented_rule(n, d, budget, expected):
    assert _expected_factory(n, d, budget) == expected
    assert factory.choose_factory(n, d, budget)[0] == expected


def test_default_factory_refuses_an_impossible_budget():
    with pytest.raises(InputError, match="fits in"):
        factory.choose_factory(10_000_000, 512, 10 * 2**20)


def test_machine_memory_matches_the_kernels_page_count():
    """Against sysconf(SC_PHYS_PAGES) * page size, which glibc >= 2.23 takes from sysinfo(2)
    (totalram), not from /proc/meminfo. Both report the kernel's count of usable RAM pages
    (MemTotal in KiB, sysinfo in mem_unit bytes), so they agree to within the one page that
    rounding to whole pages may cost. Where lxcfs mounts its own /proc/meminfo (the container's
    limit, which sysinfo does not see) they may differ."""
    if not os.path.exists("/proc/meminfo") or "SC_PHYS_PAGES" not in getattr(os, "sysconf_names", {}):
        pytest.skip("needs /proc/meminfo (else the code falls back to this very sysconf) and sysconf")
    if os.path.exists("/proc/mounts") and any(
        line.split()[1:3] == ["/proc/meminfo", "fuse.lxcfs"] for line in open("/proc/mounts")
    ):
        pytest.skip("/proc/meminfo is virtualised by lxcfs")
    page = os.sysconf("SC_PAGE_SIZE")
    assert abs(factory.machine_memory_bytes() - page * os.sysconf("SC_PHYS_PAGES")) <= page


# -- results and recall against brute force ----------------------------------------------------
def test_flat_index_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    _store(tmp_path / "train", [unit_rows(rng, 300, 16), unit_rows(rng, 5, 16), unit_rows(rng, 200, 16)], "t")
    _store(tmp_path / "eval", [unit_rows(rng, 40, 16), unit_rows(rng, 23, 16)], "e")
    m = ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=50, k=5, chunk_rows=128)
    infos = read_json(tmp_path / "idx" / "infos.json")
    assert infos["factory"] == "Flat" and infos["metric"] == "ip" and (infos["count"], infos["dim"]) == (505, 16)
    assert m["recall"] == {"k": 5, "queries": 50, "recall_at_k": 1.0}
    T, tkeys = _stored(tmp_path / "train")
    assert pq.read_table(tmp_path / "idx" / "keys.parquet").column("key").to_pylist() == tkeys.tolist()

    s = ix.index_search(tmp_path / "idx", {"e": tmp_path / "eval"}, tmp_path / "out", k=7, recall_queries=20, chunk_rows=25)
    assert s["recall"]["e"]["recall_at_k"] == 1.0 and s["counts"]["e"]["pairs"] == 63 * 7
    Q, qkeys = _stored(tmp_path / "eval")
    order, scores = _brute(Q, T, 7)
    got = pq.read_table(tmp_path / "out" / "eval" / "e.parquet").to_pandas()
    assert list(got.columns) == ["query_key", "rank", "train_key", "score", "train_row"]
    assert got["query_key"].tolist() == np.repeat(qkeys, 7).tolist()
    assert got["rank"].tolist() == np.tile(np.arange(7), 63).tolist()
    assert got["train_key"].tolist() == tkeys[order].ravel().tolist()
    assert got["train_row"].tolist() == order.ravel().tolist()
    np.testing.assert_allclose(got["score"].to_numpy(), scores.ravel(), atol=1e-5)


def _check_build_recall(folder, k):
    """Recompute the build's recall: faiss on the saved index vs numpy brute force."""
    manifest, infos = read_json(folder / "manifest.json"), read_json(folder / "infos.json")
    T, tkeys = _stored(infos["store"])
    rec = pq.read_table(folder / "recall.parquet").to_pandas()
    pos = {key: i for i, key in enumerate(tkeys)}
    rows = np.array([pos[key] for key in rec["query_key"]])
    assert len(set(rows)) == len(rows) == manifest["recall"]["queries"]
    index = faiss.read_index(str(folder / "knn.index"))
    space = faiss.ParameterSpace()
    for name, value in infos["search_params"].items():
        space.set_index_parameter(index, name, value)
    _, ann = index.search(T[rows].astype(np.float32), k)
    mine = _recall(ann, _brute(T[rows], T, k)[0])
    np.testing.assert_allclose(rec["recall"].to_numpy(), mine)
    assert manifest["recall"]["recall_at_k"] == pytest.approx(mine.mean(), abs=1e-12)
    return mine.mean()


def _check_search_recall(out, train, k):
    """Recompute the search's recall from its own output vs numpy brute force."""
    T, _ = _stored(train)
    Q, qkeys = _stored(out.parent / "eval")
    got = pq.read_table(out / "eval" / "e.parquet").to_pandas()
    rec = pq.read_table(out / "recall" / "e.parquet").to_pandas()
    pos = {key: i for i, key in enumerate(qkeys)}
    rows = np.array([pos[key] for key in rec["query_key"]])
    ann = np.full((len(rows), k), -1)
    for i, key in enumerate(rec["query_key"]):
        hits = got[got["query_key"] == key]
        ann[i, hits["rank"].to_numpy()] = hits["train_row"].to_numpy()
    mine = _recall(ann, _brute(Q[rows], T, k)[0])
    np.testing.assert_allclose(rec["recall"].to_numpy(), mine)
    assert read_json(out / "manifest.json")["recall"]["e"]["recall_at_k"] == pytest.approx(mine.mean(), abs=1e-12)
    return mine.mean()


def test_reported_recall_equals_an_independent_recall(tmp_path):
    rng = np.random.default_rng(1)
    x, _ = _clusters(rng, 3000, spread=0.6)
    _store(tmp_path / "train", [x[:1700], x[1700:]], "t")
    _store(tmp_path / "eval", [_clusters(rng, 150, spread=0.6)[0]], "e")
    ix.index_build(tmp_path / "train", tmp_path / "idx", factory="IVF32,Flat", recall_queries=120, chunk_rows=1000)
    assert read_json(tmp_path / "idx" / "infos.json")["search_params"] == {"nprobe": 8}
    r_build = _check_build_recall(tmp_path / "idx", 10)
    ix.index_search(tmp_path / "idx", {"e": tmp_path / "eval"}, tmp_path / "out", k=10, nprobe=1, recall_queries=60, chunk_rows=64)
    r_search = _check_search_recall(tmp_path / "out", tmp_path / "train", 10)
    assert 0.05 < r_search < r_build  # nprobe 1 loses neighbours in other lists: the check is not trivial


def test_hnsw_on_clustered_data_reaches_high_recall(tmp_path, caplog):
    rng = np.random.default_rng(2)
    x, centers = _clusters(rng, 4000)
    _store(tmp_path / "train", [x], "t")
    _store(tmp_path / "eval", [_clusters(rng, 200)[0]], "e")
    with caplog.at_level(logging.WARNING):
        m = ix.index_build(tmp_path / "train", tmp_path / "idx", factory="HNSW32", recall_queries=200)
        ix.index_search(tmp_path / "idx", {"e": tmp_path / "eval"}, tmp_path / "out", k=10, recall_queries=100)
    assert read_json(tmp_path / "idx" / "infos.json")["search_params"] == {"efSearch": 256}
    assert m["index"]["factory"] == "HNSW32"
    assert _check_build_recall(tmp_path / "idx", 10) >= 0.9
    assert _check_search_recall(tmp_path / "out", tmp_path / "train", 10) >= 0.9
    assert "unreliable" not in caplog.text


def test_ivf_on_uniform_data_has_low_recall_and_warns(tmp_path, caplog):
    rng = np.random.default_rng(3)
    _store(tmp_path / "train", [unit_rows(rng, 4000, 64)], "t")
    _store(tmp_path / "eval", [unit_rows(rng, 100, 64)], "e")
    ix.index_build(tmp_path / "train", tmp_path / "idx", factory="IVF64,Flat", recall_queries=100)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = ix.index_search(tmp_path / "idx", {"e": tmp_path / "eval"}, tmp_path / "out", k=10, nprobe=1, recall_queries=100)
    assert s["recall"]["e"]["recall_at_k"] < 0.5
    assert s["recall"]["e"]["recall_at_k"] == pytest.approx(_check_search_recall(tmp_path / "out", tmp_path / "train", 10))
    assert "ANN on this data is unreliable: use `oodlab neighbors` for exact results" in caplog.text


# -- refusals, re-runs, CLI ----------------------------------------------------------------------
def test_mismatched_eval_stores_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    _store(tmp_path / "train", [unit_rows(rng, 100, 16)], "t")
    _store(tmp_path / "dim", [unit_rows(rng, 10, 8)], "e")
    _store(tmp_path / "model", [unit_rows(rng, 10, 16)], "e", model=OTHER)
    ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=10)
    with pytest.raises(IncompatibleError, match="dim 8 but the index"):
        ix.index_search(tmp_path / "idx", {"e": tmp_path / "dim"}, tmp_path / "o1")
    with pytest.raises(IncompatibleError, match="tiny-rn .* tiny-vit"):
        ix.index_search(tmp_path / "idx", {"e": tmp_path / "model"}, tmp_path / "o2")
    with pytest.raises(InputError, match="--nprobe 4 does not apply"):
        ix.index_search(tmp_path / "idx", {"e": tmp_path / "train"}, tmp_path / "o3", nprobe=4)
    with pytest.raises(InputError, match="cannot make an index"):
        ix.index_build(tmp_path / "train", tmp_path / "bad", factory="NoSuchIndex")


def test_bad_rows_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    _store(tmp_path / "train", [unit_rows(rng, 50, 8)], "t")
    path = tmp_path / "train" / "img_emb" / "img_emb_0.npy"
    emb = np.load(path)
    emb[7] *= 2
    np.save(path, emb)
    with pytest.raises(InputError, match="row 7 has norm 2.0"):
        ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=0)


def test_rerun_is_skipped_and_other_parameters_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    _store(tmp_path / "train", [unit_rows(rng, 200, 8)], "t")
    first = ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=20)
    files = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    stamp = (tmp_path / "idx" / "knn.index").stat().st_mtime_ns
    assert ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=20) == first
    assert (tmp_path / "idx" / "knn.index").stat().st_mtime_ns == stamp
    with pytest.raises(IncompatibleError, match="other inputs or parameters"):
        ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=30)
    (tmp_path / "idx" / "manifest.json").unlink()  # as if killed before completion
    ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=20)
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == files
    ix.index_build(tmp_path / "train", tmp_path / "idx", recall_queries=30, overwrite=True)
    assert read_json(tmp_path / "idx" / "manifest.json")["recall"]["queries"] == 30


def test_cli_build_and_search(tmp_path):
    rng = np.random.default_rng(7)
    _store(tmp_path / "train", [unit_rows(rng, 120, 12), unit_rows(rng, 80, 12)], "t")
    _store(tmp_path / "eval", [unit_rows(rng, 30, 12)], "e")
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "--store", str(tmp_path / "train"), "--out", str(tmp_path / "idx"),
                                "--recall-queries", "40", "--k", "3", "--chunk-rows", "64"])
    assert built.exit_code == 0, built.output
    found = runner.invoke(app, ["index", "search", "--index", str(tmp_path / "idx"), "--eval-store", f"e={tmp_path / 'eval'}",
                                "--out", str(tmp_path / "out"), "--k", "4", "--recall-queries", "30"])
    assert found.exit_code == 0, found.output
    T, tkeys = _stored(tmp_path / "train")
    Q, _ = _stored(tmp_path / "eval")
    got = pq.read_table(tmp_path / "out" / "eval" / "e.parquet").column("train_key").to_pylist()
    assert got == tkeys[_brute(Q, T, 4)[0]].ravel().tolist()
    assert read_json(tmp_path / "idx" / "manifest.json")["recall"]["k"] == 3
    assert read_json(tmp_path / "out" / "manifest.json")["recall"]["e"]["recall_at_k"] == 1.0
