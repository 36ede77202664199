"""Intervals against independent computations (scipy.stats, a direct bootstrap written out here,
the t table), and the claims table on a hand-made experiment folder with planted outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.stats as st

from oodlab.analysis.claims import claims_table, verdict
from oodlab.analysis.intervals import Interval, paired_difference, seed_interval, trend
from oodlab.experiments.outcomes import load_outcomes
from oodlab.experiments.tables import similarity_table


def test_seed_interval_is_the_t_interval_of_the_table():
    x = [0.70, 0.72, 0.75]
    mean, sd = np.mean(x), np.std(x, ddof=1)
    t_2 = 4.302652729911275  # t_{0.975, 2} from a printed table
    i = seed_interval(x)
    assert i.estimate == pytest.approx(mean)
    assert (i.low, i.high) == pytest.approx((mean - t_2 * sd / np.sqrt(3), mean + t_2 * sd / np.sqrt(3)))
    assert np.isnan(seed_interval([0.7]).low)


def test_paired_difference_one_seed_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    a, b = (rng.random((1, 600)) < 0.7).astype(float), (rng.random((1, 600)) < 0.62).astype(float)
    mine = paired_difference(a, b, resamples=8000)
    ref = st.bootstrap((a[0], b[0]), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                       n_resamples=8000, method="percentile", random_state=0).confidence_interval
    assert mine.estimate == pytest.approx(a.mean() - b.mean())
    assert mine.low == pytest.approx(ref.low, abs=0.006) and mine.high == pytest.approx(ref.high, abs=0.006)


def test_paired_difference_over_seeds_and_sets_matches_a_direct_bootstrap():
    """Two eval sets, 4 seeds with a seed effect: against a loop that draws seeds then samples."""
    rng = np.random.default_rng(2)
    shift = np.array([0.0, 0.08, -0.05, 0.12])[:, None]  # run-to-run variation of A
    a = [(rng.random((4, n)) < 0.6 + shift).astype(float) for n in (300, 200)]
    b = [(rng.random((4, n)) < 0.6).astype(float) for n in (300, 200)]
    mine = paired_difference(a, b, resamples=4000, seed=3)
    direct = np.empty(4000)
    for r in range(4000):
        seeds = rng.integers(0, 4, 4)
        per_set = []
        for x, y in zip(a, b):
            idx = rng.integers(0, x.shape[1], x.shape[1])
            per_set.append(np.mean([x[s, idx].mean() - y[s, idx].mean() for s in seeds]))
        direct[r] = np.mean(per_set)
    low, high = np.percentile(direct, [2.5, 97.5])
    assert mine.estimate == pytest.approx(np.mean([(x - y).mean() for x, y in zip(a, b)]))
    assert mine.low == pytest.approx(low, abs=0.008) and mine.high == pytest.approx(high, abs=0.008)
    # the seed variation widens the interval beyond the samples-only one of the seed-mean
    samples_only = paired_difference([x.mean(0, keepdims=True) for x in a], [y.mean(0, keepdims=True) for y in b])
    assert mine.high - mine.low > 1.3 * (samples_only.high - samples_only.low)


def test_trend_matches_spearman_and_a_direct_bootstrap():
    rng = np.random.default_rng(4)
    s = rng.random(400)
    c = (rng.random(400) < s).astype(float)
    mine = trend(s, c, resamples=3000)
    assert mine.estimate == pytest.approx(st.spearmanr(s, c).statistic)
    direct = []
    for _ in range(3000):
        idx = rng.integers(0, 400, 400)
        direct.append(st.spearmanr(s[idx], c[idx]).statistic)
    low, high = np.percentile(direct, [2.5, 97.5])
    assert mine.low == pytest.approx(low, abs=0.015) and mine.high == pytest.approx(high, abs=0.015)


def test_verdicts():
    assert verdict(Interval(0.1, 0.05, 0.2), +1) == "holds"
    assert verdict(Interval(0.1, 0.05, 0.2), -1) == "fails"
    assert verdict(Interval(0.0, -0.05, 0.2), +1) == "inconclusive"
    assert verdict(Interval(0.1, float("nan"), float("nan")), +1) == "inconclusive"


EVALS = ("val", "sketch")
SEEDS = (0, 1, 2)
#: planted accuracy per training set: near loses more than random (holds), aligned beats near
#: (holds), far is *worse* than near (the far claim must fail)
PLANTED = {"full": 0.8, "combined-pruned": 0.72, "near-pruned": 0.55, "far-pruned": 0.4, "random": 0.7}


def _planted_folder(root: Path) -> Path:
    """A hand-made experiment folder: results.json, predictions per row/seed/eval set, and a
    neighbours folder whose NN similarities make the full model's correctness rise with
    similarity on val and fall with it on sketch."""
    rng = np.random.default_rng(5)
    n = 400
    keys = [f"n0000/{i:04d}.jpg" for i in range(n)]
    sims = {e: rng.uniform(0.5, 1.0, n) for e in EVALS}
    for e in EVALS:
        path = root / "neighbors" / "eval" / f"{e}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"query_key": keys, "rank": np.zeros(n, np.int32), "train_key": ["p"] * n,
                                 "score": sims[e].astype(np.float32)}), path)
    rows = []
    for name, p in PLANTED.items():
        record = {"training_set": name, "size": 1000, "removed": 0 if name == "full" else 100, "seeds": {}}
        for s in SEEDS:
            predictions = {}
            for e in EVALS:
                x = (sims[e] - 0.5) * 2  # in [0, 1]
                prob = np.clip(p + 0.6 * ((x if e == "val" else 1 - x) - 0.5), 0, 1) if name == "full" else np.full(n, p)
                correct = rng.random(n) < prob + rng.normal(0, 0.02)  # a seed effect
                rel = f"eval/{name}/seed-{s}/epoch_1/{e}/predictions.parquet"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"key": keys[::-1], "correct": correct[::-1]}), root / rel)  # any order
                predictions[e] = rel
            record["seeds"][str(s)] = {"run": "r", "checkpoint": "c", "predictions": predictions}
        rows.append(record)
    (root / "results.json").write_text(json.dumps({"eval_sets": list(EVALS), "seeds": list(SEEDS),
                                                   "neighbors": str(root / "neighbors"), "rows": rows}))
    return root


def test_claims_table_from_planted_outcomes(tmp_path):
    folder = _planted_folder(tmp_path)
    claims = claims_table(load_outcomes(folder), folder)
    got = {(r["claim"], r["scope"]): r["verdict"] for r in claims["rows"]}
    assert got[("accuracy-rises-with-similarity", "val")] == "holds"
    assert got[("accuracy-rises-with-similarity", "sketch")] == "fails"
    mean = "mean over val, sketch"
    assert got[("near-hurts-more-than-random", mean)] == "holds"
    assert got[("aligned-costs-less-than-near", mean)] == "holds"
    assert got[("far-costs-less-than-near", mean)] == "fails"
    near_vs_random = next(r for r in claims["rows"] if r["claim"] == "near-hurts-more-than-random")
    assert near_vs_random["estimate"] == pytest.approx(PLANTED["near-pruned"] - PLANTED["random"], abs=0.04)
    text = (folder / "claims.md").read_text()
    assert "**fails**" in text and "**holds**" in text and (folder / "claims.csv").read_text().count("\n") == 6


def test_table_intervals_from_planted_outcomes(tmp_path):
    folder = _planted_folder(tmp_path)
    outcomes = load_outcomes(folder)
    table = similarity_table(outcomes, folder)
    rows = {r["training_set"]: r for r in table["rows"]}
    for name in PLANTED:
        for e in EVALS:
            per_seed = outcomes.correct(name, e).mean(axis=1)
            ref = st.t.interval(0.95, len(SEEDS) - 1, loc=per_seed.mean(), scale=st.sem(per_seed))
            assert (rows[name]["top1"][e]["low"], rows[name]["top1"][e]["high"]) == pytest.approx(ref)
    assert rows["near-pruned"]["difference"]["val"]["significant"] and "full" not in rows["full"]["difference"]
    assert "| - near-pruned | -100 |" in table["markdown"] and "]*" in table["markdown"]


def test_determinism_claims_and_table_bytes(tmp_path):
    """Determinism: the same outcomes give byte-identical tables (the bootstraps are seeded)."""
    first, second = _planted_folder(tmp_path / "a"), tmp_path / "b"
    second.mkdir()
    for path in first.rglob("*"):
        if path.is_file():
            target = second / path.relative_to(first)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    data = json.loads((second / "results.json").read_text())
    data["neighbors"] = str(second / "neighbors")
    (second / "results.json").write_text(json.dumps(data))
    for folder in (first, second):
        outcomes = load_outcomes(folder)
        claims_table(outcomes, folder)
        similarity_table(outcomes, folder)
    for name in ("claims.md", "claims.csv", "table.md", "table.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_domain_table_and_claims_from_planted_outcomes(tmp_path):
    """The ICLR 2025 table and claims on a hand-made folder: natural-only loses the renditions
    (holds), keeps the naturals within 3 points (holds), adding renditions recovers ~83% of the
    gap (holds); the clean columns equal a direct mean over the unmasked samples."""
    import pyarrow as pa

    from oodlab.analysis.claims import claims_table
    from oodlab.experiments.domains import DOMAIN_CLAIMS, DomainOutcomes, domain_table

    rng = np.random.default_rng(7)
    n = 3000
    keys = [f"n0/{i:05d}.jpg" for i in range(n)]
    planted = {"full": (0.80, 0.60), "natural-only": (0.795, 0.30), "natural+50": (0.795, 0.55), "random": (0.70, 0.50)}
    rows = []
    for name, (acc_nat, acc_ren) in planted.items():
        record = {"training_set": name, "size": 100, "removed": 0, "seeds": {}}
        for s in SEEDS:
            predictions = {}
            for e, acc in (("val", acc_nat), ("sketch", acc_ren)):
                rel = f"eval/{name}/seed-{s}/{e}.parquet"
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table({"key": keys, "correct": rng.random(n) < acc}), tmp_path / rel)
                predictions[e] = rel
            record["seeds"][str(s)] = {"run": "r", "checkpoint": "c", "predictions": predictions}
        rows.append(record)
    (tmp_path / "results.json").write_text(json.dumps({"eval_sets": ["val", "sketch"], "seeds": list(SEEDS),
                                                       "neighbors": None, "rows": rows}))
    outcomes = load_outcomes(tmp_path)
    masks = {"val": np.arange(n) % 10 != 0, "sketch": np.arange(n) % 20 != 0}  # 10% / 5% of the other domain
    view = DomainOutcomes(outcomes, {"val": "natural", "sketch": "rendition"}, masks)
    table = {r["training_set"]: r for r in domain_table(view, tmp_path)["rows"]}
    direct = outcomes.correct("full", "sketch")[:, masks["sketch"]].mean(axis=1).mean()
    assert table["full"]["columns"]["Clean rendition"]["estimate"] == pytest.approx(direct)
    assert table["natural-only"]["columns"]["Rendition"]["difference"]["significant"]
    got = {r["claim"]: r["verdict"] for r in claims_table(view, tmp_path, claims=DOMAIN_CLAIMS, paper="ICLR 2025")["rows"]}
    assert got == {"natural-only-loses-renditions": "holds", "natural-only-keeps-naturals": "holds",
                   "few-renditions-recover-most": "holds"}
    assert "Claims of ICLR 2025" in (tmp_path / "claims.md").read_text()
