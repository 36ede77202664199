"""The synthetic world (tiny preset): determinism, formats, ground truth, duplicates, styles."""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from oodlab.data.shards import iter_tar_samples
from oodlab.data.synth import PRESETS, synth
from oodlab.utils.errors import InputError
from oodlab.utils.hashing import sha256_file

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
EVAL = ("val", "v2", "sketch", "r", "a", "objectnet")
TERMS = {
    "clipart": ("clipart", "illustration"),
    "infograph": ("infograph", "informational chart"),
    "painting": ("painting", "art"),
    "quickdraw": ("quickdraw", "doodle"),
    "real": ("photo", "snapshot"),
    "sketch": ("sketch", "drawing"),
}


@pytest.fixture(scope="module")
def tiny_world_seed0(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, its world.json as returned by synth) of the tiny-preset world of seed 0."""
    root = tmp_path_factory.mktemp("synth") / "world"
    return root, synth(root, preset="tiny", seed=0, workers=0)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of a world but run.json, the record of how it was run (its workers)."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def _pixels(source) -> np.ndarray:
    with Image.open(source) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


def _pool_samples(root: Path, info: dict):
    """(shard file name, its samples) for each pool shard listed in world.json (``info``)."""
    for shard in info["pool"]["shards"]:
        yield shard, list(iter_tar_samples(root / "pool" / shard))


def _words(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


def test_same_seed_gives_identical_files_for_any_worker_count(tiny_world_seed0, tmp_path):
    root, _ = tiny_world_seed0
    again = tmp_path / "again"
    synth(again, preset="tiny", seed=0, workers=2)
    assert _hashes(again) == _hashes(root)


def test_other_seed_and_overrides_with_overwrite(tiny_world_seed0, tmp_path):
    root, _ = tiny_world_seed0
    target = tmp_path / "w"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(InputError, match="holds files that no synth run wrote"):
        synth(target, preset="tiny", seed=1, workers=0)
    assert (target / "stale.txt").exists()
    other = synth(target, preset="tiny", seed=1, workers=0, rendition_share=0.0, duplicate_share=0.0, overwrite=True)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no temporaries left
    # the folder datasets do not depend on the pool's overrides: they differ by the seed alone
    ours, theirs = _hashes(root), _hashes(target)
    jpgs = [k for k in ours if k.endswith(".jpg") and not k.startswith("pool/") and k in theirs]
    assert len(jpgs) > 300
    assert sum(ours[k] != theirs[k] for k in jpgs) > 0.95 * len(jpgs)
    domains = Counter()
    for _, samples in _pool_samples(target, other):
        for s in samples:
            meta = s.meta
            domains[meta["domain"]] += 1
            assert meta["duplicate_group"] is None and meta["near_duplicate_key"] is None
    assert domains == Counter(real=PRESETS["tiny"].pool_size)
    assert other["duplicates"]["planted_copies"] == 0


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown preset"):
        synth(tmp_path / "x", preset="huge")
    with pytest.raises(InputError, match="rendition_share"):
        synth(tmp_path / "x", preset="tiny", rendition_share=1.5)
    with pytest.raises(InputError, match="workers"):
        synth(tmp_path / "x", preset="tiny", workers=-1)
    assert not (tmp_path / "x").exists()


def test_a_failed_run_looks_unfinished_and_a_rerun_completes_it(tiny_world_seed0, tmp_path, monkeypatch):
    import oodlab.data.synth.world as world_module

    calls = []
    render = world_module.render

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 150:
            raise RuntimeError("killed")
        return render(*args, **kwargs)

    monkeypatch.setattr(world_module, "render", broken)
    with pytest.raises(RuntimeError, match="killed"):
        synth(tmp_path / "w", preset="tiny", seed=0, workers=0)
    assert not (tmp_path / "w" / "world.json").exists() and not (tmp_path / "w" / "manifest.json").exists()
    monkeypatch.setattr(world_module, "render", render)
    synth(tmp_path / "w", preset="tiny", seed=0, workers=0)
    assert _hashes(tmp_path / "w") == _hashes(tiny_world_seed0[0])


def test_counts_and_class_folders_match_disk(tiny_world_seed0):
    root, w = tiny_world_seed0
    assert w["preset"] == "tiny" and w["seed"] == 0 and w["image_size"] == 32
    wnids = {c["index"]: c["wnid"] for c in w["classes"]}
    assert len(wnids) == 8 and all(re.fullmatch(r"n\d{8}", x) for x in wnids.values())
    assert len(set(wnids.values())) == 8
    gt = pq.read_table(root / w["ground_truth"]).to_pylist()
    gt_counts = Counter(r["dataset"] for r in gt)
    n_pool = sum(len(samples) for _, samples in _pool_samples(root, w))
    assert n_pool == w["datasets"]["pool"]["count"] == gt_counts["pool"] == 400
    for name in ["imagenet-train"] + [f"eval/{e}" for e in EVAL]:
        entry = w["datasets"][name]
        files = sorted((root / name).rglob("*.jpg"))
        assert len(files) == entry["count"] == gt_counts[name] == len(entry["classes"]) * (
            10 if name == "imagenet-train" else 4)
        assert {p.parent.name for p in files} == {wnids[c] for c in entry["classes"]}
        for p in files:  # ImageNet-style names inside the class folder
            assert re.fullmatch(rf"{p.parent.name}_\d+\.jpg", p.name)
    dn = sorted((root / "domainnet").rglob("*.jpg"))
    assert len(dn) == w["datasets"]["domainnet"]["count"] == gt_counts["domainnet"] == 6 * 8 * (3 + 2)
    for row in gt:
        if row["dataset"] != "pool":
            assert (root / row["dataset"] / row["key"]).is_file(), row
    subsets = {e: w["datasets"][f"eval/{e}"]["classes"] for e in EVAL}
    for e in ("r", "a", "objectnet"):
        assert len(subsets[e]) == round(8 * 2 / 3)
    for e in ("val", "v2", "sketch"):
        assert subsets[e] == list(range(8))


def test_pool_shards_have_img2dataset_layout(tiny_world_seed0):
    root, w = tiny_world_seed0
    names = {c["index"]: c["name"] for c in w["classes"]}
    parquet_rows = 0
    for shard, samples in _pool_samples(root, w):
        stem = shard.removesuffix(".tar")
        table = {r["key"]: r for r in pq.read_table(root / "pool" / f"{stem}.parquet").to_pylist()}
        stats = json.loads((root / "pool" / f"{stem}_stats.json").read_text())
        assert stats["count"] == len(samples) == len(table)
        parquet_rows += len(table)
        for s in samples:
            assert re.fullmatch(r"\d{9}", s.key) and s.key.startswith(stem)
            assert set(s.members) == {"jpg", "txt", "json"}
            meta = s.meta
            assert meta["key"] == s.key and meta["status"] == "success"
            assert table[s.key] == meta  # the parquet row holds the same fields
            caption = s.caption
            assert caption == meta["caption"]
            assert meta["class_name"] == names[meta["class_index"]]
            assert _words(caption, meta["class_name"]) == meta["caption_names_class"]
            assert any(_words(caption, t) for t in TERMS[meta["domain"]]) == meta["caption_names_domain"]
            pixels = _pixels(io.BytesIO(s.members["jpg"]))
            assert pixels.shape == (meta["height"], meta["width"], 3) == (32, 32, 3)
    assert parquet_rows == 400


def test_caption_statistics(tiny_world_seed0):
    root, w = tiny_world_seed0
    metas = [s.meta for _, samples in _pool_samples(root, w) for s in samples]
    named_domain = np.mean([m["caption_names_domain"] for m in metas])
    named_class = np.mean([m["caption_names_class"] for m in metas])
    assert 0.4 < named_domain < 0.6  # two of the four candidate terms are domain words
    assert 0.85 < named_class < 0.995  # half of the 10% noisy captions lose the class name
    # articles agree with the next word
    for m in metas:
        assert not re.search(r"\ba [aeiou]", m["caption"]), m["caption"]
        assert not re.search(r"\ban [^aeiou]", m["caption"]), m["caption"]


def test_domainnet_lists(tiny_world_seed0):
    root, w = tiny_world_seed0
    folders = [c["folder"] for c in w["classes"]]
    listed = set()
    for domain in DOMAINS:
        for split, n in (("train", 3), ("test", 2)):
            lines = (root / "domainnet" / f"{domain}_{split}.txt").read_text().splitlines()
            assert len(lines) == 8 * n
            for line in lines:
                path, label = line.split(" ")
                d, folder, name = path.split("/")
                assert d == domain and name.startswith(f"{domain}_") and name.endswith(".jpg")
                assert int(label) == folders.index(folder)
                assert (root / "domainnet" / path).is_file()
                assert path not in listed
                listed.add(path)
    on_disk = {p.relative_to(root / "domainnet").as_posix() for p in (root / "domainnet").rglob("*.jpg")}
    assert listed == on_disk
    gt = pq.read_table(root / w["ground_truth"]).to_pylist()
    splits = {r["key"]: r["split"] for r in gt if r["dataset"] == "domainnet"}
    assert {k for k, s in splits.items() if s == "test"} == {
        line.split(" ")[0] for d in DOMAINS for line in (root / "domainnet" / f"{d}_test.txt").read_text().splitlines()}


def _aligned_distance(a: np.ndarray, b: np.ndarray, shift: int = 2) -> float:
    """Mean absolute pixel difference at the best integer shift within +-shift (brute force)."""
    n = a.shape[0]
    best = np.inf
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            sa = a[max(0, dy):n + min(0, dy), max(0, dx):n + min(0, dx)]
            sb = b[max(0, -dy):n + min(0, -dy), max(0, -dx):n + min(0, -dx)]
            best = min(best, float(np.abs(sa - sb).mean()))
    return best


def test_planted_duplicates_copy_existing_eval_images(tiny_world_seed0):
    root, w = tiny_world_seed0
    rng = random.Random(0)
    gt = pq.read_table(root / w["ground_truth"]).to_pylist()
    group_of = {(r["dataset"], r["key"]): r["duplicate_group"] for r in gt}
    ratios = []
    for _, samples in _pool_samples(root, w):
        for s in samples:
            m = s.meta
            if m["near_duplicate_key"] is None:
                continue
            source = root / m["near_duplicate_dataset"] / m["near_duplicate_key"]
            assert source.is_file()
            assert source.parent.name == m["wnid"]
            assert group_of[(m["near_duplicate_dataset"], m["near_duplicate_key"])] == m["duplicate_group"]
            copy = _pixels(io.BytesIO(s.members["jpg"]))
            other = rng.choice([p for p in source.parent.glob("*.jpg") if p != source])
            near, far = _aligned_distance(copy, _pixels(source)), _aligned_distance(copy, _pixels(other))
            assert near < 0.75 * far, (m, near, far)
            ratios.append(near / far)
    dup = w["duplicates"]
    assert len(ratios) == dup["eval_copies"] > 0 and np.mean(ratios) < 0.5
    assert {d for d, n in dup["eval_copies_by_dataset"].items() if n > 0} == {f"eval/{e}" for e in EVAL}


def test_pool_internal_duplicate_groups(tiny_world_seed0):
    root, w = tiny_world_seed0
    rng = random.Random(0)
    samples = {s.key: (s.meta, _pixels(io.BytesIO(s.members["jpg"])))
               for _, shard in _pool_samples(root, w) for s in shard}
    groups = defaultdict(list)
    for key, (m, _) in samples.items():
        if m["duplicate_group"] is not None and m["near_duplicate_key"] is None:
            groups[m["duplicate_group"]].append(key)
    dup = w["duplicates"]
    assert len(groups) == dup["pool_groups"] > 0
    assert sum(len(keys) for keys in groups.values()) == dup["pool_copies"] + dup["pool_groups"]
    for keys in groups.values():  # a source and its 1-2 copies: one class and domain, close pixels
        assert 2 <= len(keys) <= 3
        metas = [samples[k][0] for k in keys]
        assert len({(m["class_name"], m["domain"]) for m in metas}) == 1
        same_class = [k for k, (m, _) in samples.items()
                      if m["class_name"] == metas[0]["class_name"] and k not in keys]
        for a, b in zip(keys, keys[1:]):
            near = _aligned_distance(samples[a][1], samples[b][1])
            far = _aligned_distance(samples[a][1], samples[rng.choice(same_class)][1])
            assert near < 0.75 * far, (metas, near, far)


def test_images_are_not_blank(tiny_world_seed0):
    root, w = tiny_world_seed0
    for name in [f"eval/{e}" for e in EVAL] + ["imagenet-train"]:
        for p in (root / name).rglob("*.jpg"):
            assert _pixels(p).std() > 8, p


def _style_stats(root: Path, domain: str) -> dict[str, float]:
    a = np.stack([_pixels(p) for p in sorted((root / "domainnet" / domain).rglob("*.jpg"))])
    grey = a.mean(axis=3)
    spread = a.max(axis=3) - a.min(axis=3)
    lap = np.abs(4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2]
                 - grey[:, 1:-1, 2:])
    return {
        "white": float((a.min(axis=3) > 225).mean()),
        "colour": float(spread.mean()),
        "black": float((a.max(axis=3) < 60).mean()),
        "grey_bars": float(((spread < 12) & (grey > 70) & (grey < 210)).mean()),
        "edges": float(lap.mean()),
    }


def test_domain_styles_differ(tiny_world_seed0):
    root, _ = tiny_world_seed0
    st = {d: _style_stats(root, d) for d in DOMAINS}
    for d in ("sketch", "quickdraw"):  # grey strokes on white paper
        assert st[d]["white"] > 0.7 and st[d]["colour"] < 2
    for d in ("clipart", "infograph", "painting", "real"):
        assert st[d]["colour"] > 15
    for d in ("real", "painting"):  # full-bleed backgrounds
        assert st[d]["white"] < 0.05
    assert st["infograph"]["white"] > 0.4  # a white page ...
    assert all(st["infograph"]["grey_bars"] > 2 * st[d]["grey_bars"] for d in ("clipart", "painting", "real"))
    assert all(st["clipart"]["black"] > 3 * st[d]["black"] for d in DOMAINS if d != "clipart")  # outlines
    assert st["painting"]["edges"] < 0.6 * min(st["real"]["edges"], st["clipart"]["edges"])  # blurred
    assert st["quickdraw"]["black"] > 1.3 * st["sketch"]["black"]  # black pen vs grey pencil
    assert st["sketch"]["grey_bars"] > 1.2 * st["quickdraw"]["grey_bars"]  # hatching and doubled strokes


def test_contact_sheet_and_world_json(tiny_world_seed0):
    root, w = tiny_world_seed0
    with Image.open(root / w["contact_sheet"]) as sheet:
        assert sheet.width > 6 * 64 and sheet.height > 8 * 64
    assert [d["name"] for d in w["domains"]] == list(DOMAINS)
    assert {d["name"]: tuple(d["caption_terms"]) for d in w["domains"]} == TERMS
    assert sum(w["pool"]["domains"].values()) == 400
    assert len(w["pool"]["shards"]) >= 3
    assert json.loads((root / "world.json").read_text()) == json.loads(json.dumps(w))


def test_ambiguous_and_opposite_domain_images_at_their_shares(tmp_path):
    """A tiny world with 10% ambiguous images and 10% opposite-domain eval images: the ground
    truth's style column follows the domains, the shares are within binomial noise of the knobs,
    the eval images keep their class folders, and the tiny preset itself has none of either."""
    from dataclasses import replace

    from oodlab.data.synth.domains import AMBIGUOUS_DOMAINS, style_of

    PRESETS["tiny-domains"] = replace(PRESETS["tiny"], name="tiny-domains", pool_size=1000, pool_shard_size=250,
                                      eval_per_class=20, ambiguous_share=0.1, eval_opposite_share=0.1)
    try:
        synth(tmp_path / "w", preset="tiny-domains", seed=1, workers=0)
    finally:
        del PRESETS["tiny-domains"]
    truth = pq.read_table(tmp_path / "w" / "ground_truth.parquet").to_pandas()
    assert (truth["style"] == truth["domain"].map(style_of)).all()
    pool = truth[truth.dataset == "pool"]
    share = (pool["style"] == "ambiguous").mean()
    assert abs(share - 0.1) <= 3 * np.sqrt(0.1 * 0.9 / len(pool)), share
    assert set(pool.domain[pool["style"] == "ambiguous"]) == set(AMBIGUOUS_DOMAINS)
    for name, intended in (("val", "natural"), ("sketch", "rendition")):
        ev = truth[truth.dataset == f"eval/{name}"]
        opposite = (ev["style"] == ("rendition" if intended == "natural" else "natural")).mean()
        assert abs(opposite - 0.1) <= 3 * np.sqrt(0.1 * 0.9 / len(ev)), (name, opposite)
        assert (ev["style"] == "ambiguous").any()
        assert all(k.split("/")[0] == f"n{10_000_000 + c:08d}" for k, c in zip(ev.key, ev.class_index))


def test_worlds_without_the_knobs_have_no_ambiguous_or_opposite_images(tiny_world_seed0):
    truth = pq.read_table(tiny_world_seed0[0] / "ground_truth.parquet").to_pandas()
    assert not (truth["style"] == "ambiguous").any()
    ev = truth[truth.dataset.isin(["eval/val", "eval/v2", "eval/a", "eval/objectnet"])]
    assert (ev["style"] == "natural").all() and (truth[truth.dataset == "eval/sketch"]["style"] == "rendition").all()
