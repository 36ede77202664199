"""Analyses of neighbors outputs, each checked against an independent computation."""

import base64
import json
import math
import re
import sys
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from click.testing import CliRunner

from oodlab.analysis import accuracy_by_bin, similarity_accuracy, similarity_gallery, similarity_report, wilson_interval
from oodlab.cli import app
from oodlab.embeddings import store as st
from oodlab.similarity.neighbors import neighbors
from oodlab.utils.errors import InputError
from tests.helpers import unit_rows, write_image_folder, write_shards

Z95 = 1.959963984540054  # standard normal 0.975 quantile


def _store(path, emb, keys):
    st.write_part(path, 0, 1, image=emb, metadata=pa.table({"image_path": keys}))
    st.write_sidecar(path, model=None, records=[st.read_part_record(path, 0, 1)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A neighbors run whose keys are real images: pool shards (train), ImageFolder eval sets,
    and a reference store (ImageNet-train)."""
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    d = 8
    write_shards(root / "pool", n_shards=3, per_shard=8, seed=1)
    pool_keys = [f"{s:05d}{i:04d}" for s in range(3) for i in range(8)]
    write_image_folder(root / "val", {"n1": 6, "n2": 6}, seed=2)
    write_image_folder(root / "sketch", {"n1": 4, "n2": 5}, seed=3)
    val_keys = [f"n{c}/n{c}_{i:03d}.jpg" for c, n in ((1, 6), (2, 6)) for i in range(n)]
    sketch_keys = [f"n{c}/n{c}_{i:03d}.jpg" for c, n in ((1, 4), (2, 5)) for i in range(n)]
    pool = unit_rows(rng, 24, d)
    _store(root / "stores" / "pool", pool, pool_keys)  # its folder name labels the training set
    val = pool[:12] + 0.4 * unit_rows(rng, 12, d)  # near the pool
    _store(root / "s-val", val, val_keys)
    _store(root / "s-sketch", unit_rows(rng, 9, d), sketch_keys)
    _store(root / "s-ref", unit_rows(rng, 15, d), [f"ref{i}" for i in range(15)])
    neighbors(root / "stores" / "pool", {"val": root / "s-val", "sketch": root / "s-sketch"}, root / "nb", k=5,
              reference_stores={"imagenet-train": root / "s-ref"})
    return root


def _rank0(run, name):
    t = pq.read_table(run / "nb" / "eval" / f"{name}.parquet").to_pandas()
    return t[t["rank"] == 0].set_index("query_key")["score"].astype(np.float64)


def _thresholds(run, name):
    return pq.read_table(run / "nb" / "thresholds" / f"{name}.parquet").to_pandas().set_index("key")["threshold"]


# -- Wilson intervals and binning ------------------------------------------------------------------
def _wilson_closed(k, n, z=Z95):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_matches_the_closed_formula_and_published_values():
    k = np.array([0, 1, 3, 5, 7, 10, 81, 15, 0, 1, 50])
    n = np.array([10, 10, 10, 10, 10, 10, 263, 148, 20, 29, 100])
    low, high = wilson_interval(k, n)
    for i in range(len(k)):
        lo, hi = _wilson_closed(k[i], n[i])
        assert low[i] == pytest.approx(max(lo, 0.0), abs=1e-12) and high[i] == pytest.approx(min(hi, 1.0), abs=1e-12)
    # Newcombe (1998), Stat. Med. 17:857, table I, method 3 (Wilson score, no continuity correction)
    published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}
    for (kk, nn), (lo, hi) in published.items():
        got = wilson_interval(kk, nn)
        assert round(float(got[0]), 4) == lo and round(float(got[1]), 4) == hi
    assert high[0] == pytest.approx(Z95**2 / (10 + Z95**2))  # 0 successes: upper = z^2 / (n + z^2)
    lo0, hi0 = wilson_interval(np.array([0]), np.array([0]))
    assert np.isnan(lo0[0]) and np.isnan(hi0[0])
    with pytest.raises(InputError):
        wilson_interval(5, 3)


def test_width_bins_match_a_hand_made_table():
    # edges 0, .25, .5, .75, 1: no value on an inner edge; 1.0 falls in the last (closed) bin
    sims = np.array([0.0, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.6, 0.9, 0.95, 1.0, 0.05])
    correct = np.array([0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1], bool)
    got = accuracy_by_bin(sims, correct, bins=4, binning="width")
    frame = pd.DataFrame({"bin": np.minimum(np.floor(sims * 4), 3).astype(int), "correct": correct})
    want = frame.groupby("bin")["correct"].agg(["size", "sum", "mean"]).reindex(range(4))
    np.testing.assert_allclose(got["bin_left"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(got["bin_right"], [0.25, 0.5, 0.75, 1.0])
    assert got["n"].tolist() == want["size"].fillna(0).astype(int).tolist() == [4, 4, 1, 3]
    assert got["correct"].tolist() == want["sum"].fillna(0).astype(int).tolist()
    np.testing.assert_allclose(got["accuracy"], want["mean"].to_numpy(dtype=float), equal_nan=True)
    for row in got.itertuples():
        assert (row.ci_low, row.ci_high) == pytest.approx(_wilson_closed(row.correct, row.n))


def test_empty_width_bins_and_explicit_edges():
    got = accuracy_by_bin(np.array([0.0, 0.05, 0.95, 1.0]), np.array([1, 0, 1, 1], bool), bins=4)
    assert got["n"].tolist() == [2, 0, 0, 2]
    assert np.isnan(got["accuracy"][1]) and np.isnan(got["ci_low"][2])
    got = accuracy_by_bin(np.array([0.1, 0.3, 0.6, 0.9]), np.array([1, 0, 1, 1], bool), bins=[0.2, 0.5, 0.8])
    assert got["n"].tolist() == [1, 1]  # 0.1 and 0.9 lie outside the edges
    with pytest.raises(InputError, match="unknown binning"):
        accuracy_by_bin(np.zeros(3), np.zeros(3, bool), binning="log")


def test_mass_bins_have_equal_counts_up_to_ties():
    rng = np.random.default_rng(5)
    sims = rng.uniform(0.3, 0.9, 103)
    got = accuracy_by_bin(sims, rng.random(103) < 0.5, bins=5, binning="mass")
    assert len(got) == 5 and got["n"].sum() == 103 and got["n"].max() - got["n"].min() <= 1
    assert got["bin_left"].iloc[0] == sims.min() and got["bin_right"].iloc[-1] == sims.max()
    tied = np.round(rng.uniform(0.3, 0.9, 200), 1)  # 7 distinct values
    got = accuracy_by_bin(tied, np.ones(200, bool), bins=4, binning="mass")
    assert got["n"].sum() == 200
    for value in np.unique(tied):  # ties are never split between bins
        inside = (got["bin_left"] <= value) & ((value < got["bin_right"]) | (got.index == len(got) - 1))
        assert inside.sum() == 1


# -- accuracy vs similarity --------------------------------------------------------------------------
def _predictions(path, keys, correct, shuffle_seed=0):
    order = np.random.default_rng(shuffle_seed).permutation(len(keys))
    pq.write_table(pa.table({"key": [keys[i] for i in order], "label": [0] * len(keys), "prediction": [0] * len(keys),
                             "correct": [bool(correct[i]) for i in order]}), path)


@pytest.mark.parametrize("source,binning", [("train", "width"), ("reference", "mass")])
def test_accuracy_vs_similarity_equals_a_groupby(run, tmp_path, source, binning):
    sims = _rank0(run, "val") if source == "train" else _thresholds(run, "val")
    keys = sims.index.tolist()
    correct = np.random.default_rng(1).random(len(keys)) < 0.6
    _predictions(tmp_path / "pred.parquet", keys, correct)
    manifest = similarity_accuracy(run / "nb", {"val": tmp_path / "pred.parquet"}, tmp_path / "out", bins=3,
                                   binning=binning, source=source)
    got = pd.read_csv(tmp_path / "out" / "val" / "accuracy.csv")
    assert got.columns.tolist() == ["bin_left", "bin_right", "n", "correct", "accuracy", "ci_low", "ci_high"]
    s = sims.to_numpy()
    edges = np.linspace(s.min(), s.max(), 4) if binning == "width" else np.quantile(s, [0, 1 / 3, 2 / 3, 1])
    frame = pd.DataFrame({"bin": np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 2), "correct": correct})
    want = frame.groupby("bin")["correct"].agg(["size", "sum", "mean"]).reindex(range(3))
    np.testing.assert_allclose(got["bin_left"], edges[:-1], rtol=1e-12)
    assert got["n"].tolist() == want["size"].tolist() and got["correct"].tolist() == want["sum"].tolist()
    np.testing.assert_allclose(got["accuracy"], want["mean"])
    assert manifest["counts"]["val"]["samples"] == len(keys) and manifest["counts"]["val"]["correct"] == int(correct.sum())
    with Image.open(tmp_path / "out" / "val" / "accuracy.png") as img:
        assert img.format == "PNG" and img.size[0] > 500


def test_accuracy_keys_must_match_on_both_sides(run, tmp_path):
    keys = _rank0(run, "val").index.tolist()
    _predictions(tmp_path / "short.parquet", keys[:-2], np.ones(len(keys) - 2, bool))
    with pytest.raises(InputError, match=r"short.parquet: has no prediction for 2 of 12"):
        similarity_accuracy(run / "nb", {"val": tmp_path / "short.parquet"}, tmp_path / "o")
    _predictions(tmp_path / "extra.parquet", keys + ["n9/x.jpg"], np.ones(len(keys) + 1, bool))
    with pytest.raises(InputError, match=r"val.parquet: has no similarity for 1 samples.*n9/x.jpg"):
        similarity_accuracy(run / "nb", {"val": tmp_path / "extra.parquet"}, tmp_path / "o")
    pq.write_table(pa.table({"key": keys, "correct": [0.5] * len(keys)}), tmp_path / "float.parquet")
    with pytest.raises(InputError, match="true/false"):
        similarity_accuracy(run / "nb", {"val": tmp_path / "float.parquet"}, tmp_path / "o")
    with pytest.raises(InputError, match="eval sets with a train similarity here: \\['sketch', 'val'\\]"):
        similarity_accuracy(run / "nb", {"test": tmp_path / "short.parquet"}, tmp_path / "o")


# -- similarity report --------------------------------------------------------------------------------
def test_similarity_report_histograms_and_summary(run, tmp_path):
    out = tmp_path / "report"
    manifest = similarity_report([run / "nb"], out, bins=7)
    hist = pd.read_csv(out / "histograms.csv")
    summ = pd.read_csv(out / "summary.csv")
    for name in ("val", "sketch"):
        pool, ref = _rank0(run, name), _thresholds(run, name)
        edges = np.histogram_bin_edges(np.concatenate([pool.to_numpy(), ref.to_numpy()]), bins=7)
        for label, s in (("pool", pool), ("imagenet-train", ref)):
            h = hist[(hist.eval_set == name) & (hist.train_set == label)]
            assert h["count"].tolist() == np.histogram(s.to_numpy(), bins=edges)[0].tolist()
            np.testing.assert_allclose(h["bin_left"], edges[:-1])
            np.testing.assert_allclose(h["fraction"], h["count"] / len(s))
            row = summ[(summ.eval_set == name) & (summ.train_set == label)].iloc[0]
            assert row["n"] == len(s)
            assert row["median"] == pytest.approx(np.median(s)) and row["mean"] == pytest.approx(s.mean())
            assert row["p10"] == pytest.approx(np.percentile(s, 10)) and row["p90"] == pytest.approx(np.percentile(s, 90))
        joined = pd.concat([pool.rename("pool"), ref.rename("ref")], axis=1, join="inner")
        assert len(joined) == len(pool)
        both = summ[summ.eval_set == name].set_index("train_set")
        assert both.loc["pool", "more_similar_than__imagenet-train"] == pytest.approx((joined.pool > joined.ref).mean())
        assert both.loc["imagenet-train", "more_similar_than__pool"] == pytest.approx((joined.ref > joined.pool).mean())
        with Image.open(out / f"histogram_{name}.png") as img:
            assert img.format == "PNG"
    assert manifest["counts"] == {"sketch": {"pool": 9, "imagenet-train": 9}, "val": {"pool": 12, "imagenet-train": 12}}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    # a subset of eval sets reports only those
    similarity_report([run / "nb"], tmp_path / "one", eval_sets=["val"])
    assert sorted(p.name for p in (tmp_path / "one").glob("*.png")) == ["histogram_val.png"]
    with pytest.raises(InputError, match=r"hold no eval set \['imagenet-a'\]"):
        similarity_report([run / "nb"], tmp_path / "x", eval_sets=["imagenet-a"])
    with pytest.raises(InputError, match="not a finished `oodlab neighbors` output"):
        similarity_report([tmp_path], tmp_path / "x")


def test_similarity_report_is_deterministic(run, tmp_path):
    """Determinism: the same inputs twice give the same bytes (no timestamps in PNG, CSV, JSON)."""
    similarity_report([run / "nb"], tmp_path / "a", bins=7)
    similarity_report([run / "nb"], tmp_path / "b", bins=7)
    read = lambda root: {p.name: p.read_bytes() for p in root.iterdir()}  # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")


# -- gallery ---------------------------------------------------------------------------------------
def _pool_member(run, key):
    with tarfile.open(run / "pool" / f"{key[:5]}.tar") as tar:
        return tar.extractfile(f"{key}.jpg").read()


def test_gallery_shows_the_exact_images_of_the_top_k(run, tmp_path):
    out = tmp_path / "gallery"
    manifest = similarity_gallery(run / "nb", {"val": run / "val"}, [str(run / "pool" / "*.tar")], out, queries=4, k=3,
                                  seed=3)
    shown = pd.read_csv(out / "val" / "gallery.csv", dtype={"train_key": str})
    table = pq.read_table(run / "nb" / "eval" / "val.parquet").to_pandas()
    queries = shown["query_key"].drop_duplicates().tolist()
    assert len(queries) == 4 and manifest["counts"]["val"]["queries"] == 4
    top = {q: table[(table.query_key == q)].sort_values("rank") for q in queries}
    rank0 = [float(top[q]["score"].iloc[0]) for q in queries]
    assert rank0 == sorted(rank0, reverse=True)  # most similar first
    html = (out / "val" / "index.html").read_text()
    images = [base64.b64decode(m) for m in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)]
    expected = []
    for q in queries:
        t = top[q].head(3)
        got = shown[shown.query_key == q]
        assert got["train_key"].tolist() == t["train_key"].tolist() and got["rank"].tolist() == [0, 1, 2]
        np.testing.assert_allclose(got["score"], t["score"], rtol=1e-6)
        expected.append((run / "val" / q).read_bytes())
        expected += [_pool_member(run, key) for key in t["train_key"]]
    assert images == expected  # query then its neighbours, row by row, byte for byte
    assert "<script" not in html and "src=\"http" not in html  # static and self-contained
    with Image.open(out / "val" / "gallery.png") as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] * 0.5
    # the seed fixes the draw; asking for more queries than exist shows them all
    again = similarity_gallery(run / "nb", {"val": run / "val"}, [run / "pool"], tmp_path / "g2", queries=4, k=3, seed=3)
    assert pd.read_csv(tmp_path / "g2" / "val" / "gallery.csv")["query_key"].drop_duplicates().tolist() == queries
    assert again["counts"] == manifest["counts"]
    similarity_gallery(run / "nb", {"sketch": run / "sketch"}, [run / "pool"], tmp_path / "g3", queries=50, k=9, seed=0)
    all_q = pd.read_csv(tmp_path / "g3" / "sketch" / "gallery.csv")
    assert all_q["query_key"].nunique() == 9 and all_q.groupby("query_key").size().max() == 5


def test_gallery_refuses_missing_images(run, tmp_path):
    with pytest.raises(InputError, match="requested images are in none"):
        similarity_gallery(run / "nb", {"val": run / "sketch"}, [run / "pool"], tmp_path / "g")
    with pytest.raises(InputError, match="eval sets in this run"):
        similarity_gallery(run / "nb", {"nope": run / "val"}, [run / "pool"], tmp_path / "g")


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_end_to_end(run, tmp_path, monkeypatch):
    runner = CliRunner()
    keys = _rank0(run, "sketch").index.tolist()
    _predictions(tmp_path / "pred.parquet", keys, np.arange(len(keys)) % 2 == 0)
    result = runner.invoke(app, ["similarity", "report", "--neighbors", str(run / "nb"), "--out", str(tmp_path / "r"),
                                 "--bins", "5", "--eval-set", "sketch"])
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "r" / "summary.csv")["eval_set"]) == {"sketch"}
    result = runner.invoke(app, ["similarity", "accuracy", "--neighbors", str(run / "nb"),
                                 "--predictions", f"sketch={tmp_path / 'pred.parquet'}", "--out", str(tmp_path / "a"),
                                 "--bins", "2", "--binning", "mass", "--source", "reference"])
    assert result.exit_code == 0, result.output
    acc = pd.read_csv(tmp_path / "a" / "sketch" / "accuracy.csv")
    assert acc["n"].sum() == 9 and acc["correct"].sum() == 5
    result = runner.invoke(app, ["similarity", "gallery", "--neighbors", str(run / "nb"),
                                 "--eval-data", f"sketch={run / 'sketch'}", "--train-data", str(run / "pool" / "00000.tar"),
                                 "--train-data", str(run / "pool" / "{00001..00002}.tar"), "--out", str(tmp_path / "g"),
                                 "--queries", "2", "--k", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "sketch" / "index.html").exists() and (tmp_path / "g" / "sketch" / "gallery.png").exists()
    # bad input: a message and exit status 2 through the real entry point, no traceback
    from oodlab.cli import main

    monkeypatch.setenv("OODLAB_QUIET", "1")
    monkeypatch.setattr(sys, "argv", ["oodlab", "similarity", "accuracy", "--neighbors", str(run / "nb"),
                                      "--predictions", f"val={tmp_path / 'pred.parquet'}", "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
