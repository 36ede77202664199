"""``oodlab subset``: byte-exact round trips checked with Python's tarfile and webdataset."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from braceexpand import braceexpand
from click.testing import CliRunner

from oodlab.cli import app
from oodlab.data.shards import _stream_tar_samples, iter_tar_samples
from oodlab.data.tarformat import TruncatedShardError
from oodlab.subsets.reshard import subset
from oodlab.data.tarindex import index_tar
from oodlab.utils.errors import InputError
from tests.helpers import kill_9_midway, tree_bytes, write_shards

REPO = Path(__file__).resolve().parents[1]


def _members(tar_path):
    """{key: [(member name, bytes), ...]} and the key order, read with Python's tarfile."""
    out, order = {}, []
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            if key not in out:
                order.append(key)
                out[key] = []
            out[key].append((m.name, tf.extractfile(m).read()))
    return out, order


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("subset")
    write_shards(root / "src", n_shards=4, per_shard=25, seed=1)
    samples, order = {}, []
    for tar in sorted((root / "src").glob("*.tar")):
        s, o = _members(tar)
        samples.update({k: (v, tar.name) for k, v in s.items()})
        order += o
    return root, samples, order


def _write_keys(path, keys):
    pq.write_table(pa.table({"key": keys}), path)
    return path


def test_round_trip_bytes_counts_missing_and_duplicates(source, tmp_path):
    root, samples, order = source
    rng = np.random.default_rng(0)
    wanted = [order[i] for i in rng.permutation(len(order))[:60]]
    requested = wanted + ["999999999", "nope"] + wanted[:4] + wanted[:1]  # 2 missing, 4 repeated keys
    manifest = subset(_write_keys(tmp_path / "keys.parquet", requested), [root / "src"], tmp_path / "out", per_shard=7, workers=0)
    out = tmp_path / "out"
    expected_order = [k for k in order if k in set(wanted)]  # input shard order, then tar order
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == [f"{i:05d}.tar" for i in range(9)]
    got_order = []
    for i, tar in enumerate(tars):
        got, o = _members(tar)
        assert len(o) == (7 if i < 8 else 60 - 56)  # exact per-shard counts, last shorter
        got_order += o
        for key in o:
            assert got[key] == samples[key][0]  # same member names, order and bytes
        table = pq.read_table(out / f"{i:05d}.parquet").to_pandas()
        assert table["key"].tolist() == o
        assert table["caption"].tolist() == [dict(got[k])[f"{k}.txt"].decode() for k in o]
        assert table["source_shard"].tolist() == [samples[k][1] for k in o]
        assert json.loads((out / f"{i:05d}_stats.json").read_text())["count"] == len(o)
    assert got_order == expected_order  # no extra sample, none twice
    assert pq.read_table(out / "missing.parquet").column("key").to_pylist() == ["999999999", "nope"]
    dups = pq.read_table(out / "duplicates.parquet").to_pandas().set_index("key")["count"].to_dict()
    assert dups == {wanted[0]: 3, **{k: 2 for k in wanted[1:4]}}
    c = manifest["counts"]
    assert (c["requested"], c["requested_unique"], c["written"], c["missing"], c["output_shards"]) == (67, 62, 60, 2, 9)
    assert manifest["outputs"]["missing_keys"] == ["999999999", "nope"]
    assert pq.read_table(out / "written.parquet").column("key").to_pylist() == expected_order
    # open_clip arguments: the brace pattern names exactly the written tars
    args = json.loads((out / "openclip.json").read_text())
    assert list(braceexpand(args["train_data"])) == [str(t) for t in tars] and args["train_num_samples"] == 60
    # DataComp uids: sorted (u8, u8) halves of sha256(key)[:16], computed here independently
    uids = np.load(out / "uids.npy")
    ref = sorted((int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big"),
                  int.from_bytes(hashlib.sha256(k.encode()).digest()[8:16], "big")) for k in expected_order)
    assert uids.dtype == np.dtype("u8,u8") and [tuple(map(int, u)) for u in uids.tolist()] == ref
    assert not (out / ".staging").exists()
    # a second library reads the result
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(args["train_data"], shardshuffle=False)]
    assert keys == expected_order
    # re-running a completed run returns its manifest; other keys into the same folder are refused
    assert subset(tmp_path / "keys.parquet", [root / "src"], out, per_shard=7, workers=0) == manifest
    with pytest.raises(InputError, match=r"inputs\.keys_sha256"):
        subset(_write_keys(tmp_path / "k2.parquet", wanted[:5]), [root / "src"], out, per_shard=7, workers=0)


def test_workers_do_not_change_the_output_and_text_keys(source, tmp_path):
    root, _, order = source
    (tmp_path / "keys.txt").write_text("\n".join(order[::3]) + "\n\n")
    subset(tmp_path / "keys.txt", [str(root / "src" / "{00000..00003}.tar")], tmp_path / "a", per_shard=5, workers=0)
    subset(tmp_path / "keys.txt", [str(root / "src" / "{00000..00003}.tar")], tmp_path / "b", per_shard=5, workers=2)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    # openclip.json names the output folder; run.json records the workers setting
    same = lambda tree: {k: v for k, v in tree.items() if k not in ("openclip.json", "run.json")}  # noqa: E731
    assert same(a) == same(b)


def test_kill_and_resume_is_byte_identical(tmp_path, monkeypatch):
    write_shards(tmp_path / "src", n_shards=24, per_shard=12, seed=2)
    keys = [f"{s:05d}{i:04d}" for s in range(24) for i in range(0, 12, 2)]
    _write_keys(tmp_path / "keys.parquet", keys)
    call = (f"from oodlab.subsets import subset; subset({str(tmp_path / 'keys.parquet')!r}, "
            f"[{str(tmp_path / 'src')!r}], 'out', per_shard=3, workers=0)")
    for name in ("clean", "killed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "clean")
    subset(tmp_path / "keys.parquet", [tmp_path / "src"], "out", per_shard=3, workers=0)
    killed = tmp_path / "killed" / "out"
    units = lambda: len(list((killed / ".staging" / "index").glob("*.npz"))) + len(list(killed.glob("*.tar")))  # noqa: E731
    done = kill_9_midway([sys.executable, "-c", call], units, at_least=30, cwd=tmp_path / "killed")
    assert 30 <= done < 24 + 48 and not (killed / "manifest.json").exists()  # killed midway
    subprocess.run([sys.executable, "-c", call], cwd=tmp_path / "killed", check=True, env={**os.environ, "OODLAB_QUIET": "1"})
    assert tree_bytes(killed) == tree_bytes(tmp_path / "clean" / "out")


def _evil_tar(path, name, kind=tarfile.REGTYPE, fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tf:
        ok = tarfile.TarInfo("000000000.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        else:
            info.size = 4
        tf.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name", ["../000000001.jpg", "/abs/000000001.jpg", "a/../../" + "x" * 120 + ".jpg"])
def test_member_paths_that_escape_are_refused(tmp_path, name):
    _evil_tar(tmp_path / "evil.tar", name)
    _write_keys(tmp_path / "keys.parquet", ["000000000", "000000001"])
    for reader in (lambda: list(iter_tar_samples(tmp_path / "evil.tar")), lambda: index_tar(tmp_path / "evil.tar"),
                   lambda: subset(tmp_path / "keys.parquet", [tmp_path / "evil.tar"], tmp_path / "out", workers=0)):
        with pytest.raises(InputError, match="escapes its folder"):
            reader()
    assert not list(tmp_path.glob("out/*.tar")) and not (tmp_path / "000000001.jpg").exists()


def test_links_truncation_and_compression_are_refused(tmp_path):
    _evil_tar(tmp_path / "link.tar", "000000001.jpg", kind=tarfile.SYMTYPE)
    with pytest.raises(InputError, match="link or special"):
        index_tar(tmp_path / "link.tar")
    write_shards(tmp_path / "src", n_shards=1, per_shard=5)
    data = (tmp_path / "src" / "00000.tar").read_bytes()
    for cut in (len(data) - 10240, 700, 1000):
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(TruncatedShardError):
            index_tar(tmp_path / "cut.tar")
    import gzip

    (tmp_path / "z.tar.gz").write_bytes(gzip.compress(data))
    with pytest.raises(InputError, match="compressed"):
        index_tar(tmp_path / "z.tar.gz")


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_index_agrees_with_the_tarfile_reader(tmp_path, fmt):
    """Long names, prefixes, non-ASCII, upper-case extensions, directories and housekeeping members,
    in three formats."""
    names = ["d/" + "a" * 60 + "/" + "b" * 50 + ".jpg", "d/" + "a" * 60 + "/" + "b" * 50 + ".TXT", "__meta__.json",
             "k1.seg.png", "k1.jpg", "sub/", "d/" + "a" * 60 + "/" + "c" * 50 + "/", "../up/", "ünï.jpg", "ünï.json", "k2.jpg",
             "K3.JPG", "K3.Seg.Png", "__notes.jpg", "____.txt", "dir/__x__.json", "k4.jpg", "k4.TÄG"]
    if fmt == tarfile.USTAR_FORMAT:
        names = [n for n in names if n.isascii()]
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "t.tar", "w", format=fmt) as tf:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            data = rng.bytes(int(rng.integers(0, 1500)))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    index = index_tar(tmp_path / "t.tar")
    ref = list(_stream_tar_samples(tmp_path / "t.tar"))  # tarfile's own parsing
    raw = (tmp_path / "t.tar").read_bytes()
    assert [k.decode() for k in index.keys] == [s.key for s in ref]
    # iter_tar_samples reads intact tars through the index: the same samples
    assert [(s.key, s.members) for s in iter_tar_samples(tmp_path / "t.tar")] == [(s.key, s.members) for s in ref]
    for i, sample in enumerate(ref):
        lo, hi = index.bounds[i], index.bounds[i + 1]
        assert [e.decode() for e in index.ext[lo:hi]] == list(sample.members)
        assert [raw[d : d + n] for d, n in zip(index.data[lo:hi], index.size[lo:hi])] == list(sample.members.values())


def _spans(tar_path):
    """{key: the raw bytes of its members (headers, pax/GNU long-name blocks and padded data)},
    from the offsets Python's tarfile reports."""
    raw, out = Path(tar_path).read_bytes(), {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            end = m.offset_data + -(-m.size // 512) * 512
            out[m.name.split(".", 1)[0]] = out.get(m.name.split(".", 1)[0], b"") + raw[m.offset : end]
    return out


def test_upper_case_extensions_and_underscore_keys_are_copied_byte_for_byte(tmp_path):
    """``KEY.JPG``/``KEY.TXT`` samples and keys that only start with ``__`` are samples: copied with
    their original member names, headers and bytes, captions read from ``.TXT``; ``__x__``
    members are housekeeping, not samples."""
    long = "d/" + "L" * 120
    names = ["000000000.JPG", "000000000.TXT", "__meta__.json", "000000001.jpg", "000000001.Txt", "__notes.jpg",
             "__notes.txt", "000000002.Png", "__a_b.jpg", "__a_b.TXT", "__x__", f"{long}.Jpg", f"{long}.Txt"]
    (tmp_path / "src").mkdir()
    rng = np.random.default_rng(0)
    data = {n: (f"caption of {n}".encode() if n.lower().endswith(".txt") else rng.bytes(int(rng.integers(1, 1500))))
            for n in names}
    with tarfile.open(tmp_path / "src" / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for name, payload in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    wanted = ["000000000", "__notes", "000000002", "__a_b", long, "__meta__", "__x__"]
    manifest = subset(_write_keys(tmp_path / "keys.parquet", wanted), [tmp_path / "src"], tmp_path / "out", per_shard=10, workers=0)
    expected = ["000000000", "__notes", "000000002", "__a_b", long]  # tar order; __meta__, __x__ are not samples
    assert manifest["outputs"]["missing_keys"] == ["__meta__", "__x__"]
    source, out = _spans(tmp_path / "src" / "00000.tar"), tmp_path / "out" / "00000.tar"
    raw = out.read_bytes()
    body = b"".join(source[k] for k in expected)
    assert raw[: len(body)] == body and raw[len(body):] == b"\0" * (len(raw) - len(body))  # byte for byte
    assert len(raw) % 10240 == 0
    got, order = _members(out)
    assert order == expected and got == {k: [(n, data[n]) for n in names if n.split(".", 1)[0] == k] for k in expected}
    table = pq.read_table(tmp_path / "out" / "00000.parquet").to_pydict()
    assert table["key"] == expected
    assert table["caption"] == [data["000000000.TXT"].decode(), data["__notes.txt"].decode(), None,
                                data["__a_b.TXT"].decode(), data[f"{long}.Txt"].decode()]


def test_a_key_in_two_inputs_is_written_once(tmp_path):
    write_shards(tmp_path / "a", n_shards=1, per_shard=4, seed=0)
    write_shards(tmp_path / "b", n_shards=1, per_shard=4, seed=1)  # same keys, other bytes
    m = subset(_write_keys(tmp_path / "k.parquet", ["000000001", "000000003"]),
               [tmp_path / "b" / "00000.tar", tmp_path / "a" / "00000.tar"], tmp_path / "out", per_shard=10, workers=0)
    assert m["counts"]["written"] == 2 and m["counts"]["duplicate_source_keys"] == 2
    got, _ = _members(tmp_path / "out" / "00000.tar")
    want, _ = _members(tmp_path / "b" / "00000.tar")  # the first input given wins
    assert got == {k: want[k] for k in ("000000001", "000000003")}


def test_cli_subset(source, tmp_path):
    root, _, order = source
    _write_keys(tmp_path / "k.parquet", order[:30])
    result = CliRunner().invoke(app, ["subset", "--keys", str(tmp_path / "k.parquet"), "--data", str(root / "src"),
                                      "--out", str(tmp_path / "out"), "--per-shard", "8", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert [len(_members(t)[1]) for t in sorted((tmp_path / "out").glob("*.tar"))] == [8, 8, 8, 6]


# -- img2dataset metadata ------------------------------------------------------------------
_COUNTERS = ("count", "successes", "failed_to_download", "failed_to_resize", "status_dict")


def _img2dataset_shard(folder, s, n, rng, *, label_type=pa.int32(), drop=(), extra=None, unlisted=(), stats_extra=None):
    """One shard as img2dataset 1.47 writes it: a tar of the successful samples (jpg, txt, json),
    a parquet row per url (failures too, without members) and ``_stats.json``. Samples with
    ``i % 9 == 4`` are in the tar but marked failed_to_resize (not what img2dataset does: it
    exercises the status counters); ``unlisted`` keys are in the tar but not in the parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, status_dict = [], {}
    with tarfile.open(folder / f"{s:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            key, fate = f"{s:05d}{i:04d}", rng.random()
            status = "success" if fate > 0.3 or i % 9 == 4 else ("failed_to_download" if fate > 0.1 else "failed_to_resize")
            error = {"success": None, "failed_to_download": str(rng.choice(["<urlopen error timed out>", "HTTP Error 404: Not Found"])),
                     "failed_to_resize": "image too small"}[status]
            if i % 9 == 4:
                status, error = "failed_to_resize", "image decoding error"
            if key in unlisted:
                status, error = "success", None
            in_tar = status == "success" or i % 9 == 4
            caption = f"caption {s} {i} ü"
            image = rng.bytes(int(rng.integers(50, 400)))
            ok = status == "success"
            row = {"url": f"http://example.com/{key}.jpg", "caption": caption,
                   "NSFW": str(rng.choice(["UNLIKELY", "NSFW"])) if i % 5 else None, "similarity": float(rng.random()),
                   "key": key, "status": status, "error_message": error,
                   "width": 64 if ok else None, "height": 48 if ok else None,
                   "original_width": int(rng.integers(100, 999)) if ok else None,
                   "original_height": int(rng.integers(100, 999)) if ok else None,
                   "exif": json.dumps({"Image Make": f"cam{i}"}) if ok and i % 2 else None,
                   "sha256": hashlib.sha256(image).hexdigest() if ok else None, "label": i % 4, **(extra or {})}
            reason = "success" if ok else error
            status_dict[reason] = status_dict.get(reason, 0) + 1
            if in_tar:
                for ext, data in (("jpg", image), ("txt", caption.encode()), ("json", json.dumps(row).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
            if key not in unlisted:
                rows.append(row)
    types = {"similarity": pa.float64(), "width": pa.int32(), "height": pa.int32(), "original_width": pa.int32(),
             "original_height": pa.int32(), "label": label_type}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in rows[0] if c not in drop])
    pq.write_table(pa.Table.from_pylist([{c: r[c] for c in schema.names} for r in rows], schema=schema), folder / f"{s:05d}.parquet")
    statuses = [r["status"] for r in rows]
    start = 1.7e9 + 100 * s + float(rng.random())
    (folder / f"{s:05d}_stats.json").write_text(json.dumps({
        "count": n, "successes": statuses.count("success"), "failed_to_download": statuses.count("failed_to_download"),
        "failed_to_resize": statuses.count("failed_to_resize"), "duration": 12.5 + s, "start_time": start,
        "end_time": start + 12.5 + s, "status_dict": status_dict, **(stats_extra or {})}, indent=4))


def _expected_rows(tars):
    """{key: input row + source_shard} read from the inputs directly (first input of a key wins),
    and the in-tar key order: parquet rows by key, else key / txt caption / status success."""
    rows, order = {}, []
    for tar in tars:
        members, keys = _members(tar)
        parquet = tar.with_suffix(".parquet")
        listed = {r["key"]: r for r in pq.read_table(parquet).to_pylist()} if parquet.exists() else {}
        for k in keys:
            fallback = {"key": k, "caption": dict(members[k]).get(f"{k}.txt", b"").decode(), "status": "success"}
            if k not in rows:
                rows[k] = {**listed.get(k, fallback), "source_shard": tar.name}
                order.append(k)
    return rows, order


@pytest.fixture(scope="module")
def img2dataset_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2d")
    rng = np.random.default_rng(7)
    version = {"img2dataset_version": "1.47.0"}  # a field every input agrees on
    _img2dataset_shard(root, 0, 30, rng, stats_extra=version)
    _img2dataset_shard(root, 1, 30, rng, label_type=pa.int64(), drop=("exif",), extra={"LICENSE": "cc-by"},
                       unlisted=("000010002", "000010017"), stats_extra=version)
    write_shards(root / "tmp", n_shards=3, per_shard=12, seed=3)
    (root / "tmp" / "00002.tar").rename(root / "00002.tar")  # a tar without parquet or stats, keys 00002....
    _img2dataset_shard(root, 3, 40, rng, stats_extra=version)
    return root, sorted(root.glob("*.tar"))


def test_img2dataset_columns_and_stats_are_kept(img2dataset_source, tmp_path):
    root, tars = img2dataset_source
    rows, order = _expected_rows(tars)
    rng = np.random.default_rng(1)
    all_keys = [r["key"] for t in tars if t.with_suffix(".parquet").exists() for r in pq.read_table(t.with_suffix(".parquet")).to_pylist()]
    all_keys += [k for k in order if k.startswith("00002") or k in ("000010002", "000010017")]
    wanted = [k for k in all_keys if rng.random() < 0.75] + ["000010002", "000010017"]
    m = subset(_write_keys(tmp_path / "k.parquet", wanted), [root], tmp_path / "out", per_shard=8, workers=0)
    out = tmp_path / "out"
    written = [k for k in order if k in set(wanted)]
    assert m["counts"]["written"] == len(written) and m["counts"]["missing"] == len(set(wanted) - set(order))
    tables = [pq.read_table(out / f"{j:05d}.parquet") for j in range(m["counts"]["output_shards"])]
    # one schema for all shards: the union of the inputs' columns, int32 | int64 -> int64
    union = {n for t in tars if t.with_suffix(".parquet").exists() for n in pq.read_schema(t.with_suffix(".parquet")).names}
    assert all(t.schema == tables[0].schema for t in tables)
    assert set(tables[0].schema.names) == union | {"key", "caption", "status", "source_shard"}
    types = {f.name: f.type for f in tables[0].schema}
    assert (types["label"], types["width"], types["exif"], types["LICENSE"], types["similarity"]) == (
        pa.int64(), pa.int32(), pa.string(), pa.string(), pa.float64())
    got = [r for t in tables for r in t.to_pylist()]
    assert [r["key"] for r in got] == written
    for r in got:
        assert r == {**{c: None for c in tables[0].schema.names}, **rows[r["key"]]}
    assert {r["status"] for r in got} == {"success", "failed_to_resize"}  # non-success rows are written too
    fallback = {r["key"]: r for r in got if r["key"] in ("000010002", "000010017") or r["key"].startswith("00002")}
    assert len(fallback) > 2 and all(r["url"] is None and r["status"] == "success" for r in fallback.values())
    # stats: counters from the rows read above, run fields copied only where all contributing inputs agree
    input_stats = {t.name: json.loads(t.with_name(f"{t.stem}_stats.json").read_text())
                   for t in tars if t.with_name(f"{t.stem}_stats.json").exists()}
    kept_duration = 0
    for j, t in enumerate(tables):
        mine = t.to_pylist()
        status = [r["status"] for r in mine]
        ok = [s in ("success", None) for s in status]
        reasons = {}
        for r, good in zip(mine, ok):
            reason = "success" if good else (r["error_message"] or r["status"])
            reasons[reason] = reasons.get(reason, 0) + 1
        runs = [input_stats.get(name) for name in dict.fromkeys(r["source_shard"] for r in mine)]
        copied = {}
        if all(x is not None for x in runs):
            copied = {k: v for k, v in runs[0].items() if k not in _COUNTERS and all(x.get(k, object()) == v for x in runs)}
        stats = json.loads((out / f"{j:05d}_stats.json").read_text())
        assert stats == {"count": len(mine), "successes": sum(ok), "failed_to_download": status.count("failed_to_download"),
                         "failed_to_resize": status.count("failed_to_resize"), **copied, "status_dict": reasons}
        assert list(stats["status_dict"].values()) == sorted(reasons.values(), reverse=True)
        kept_duration += "duration" in stats
        if len(runs) == 1 and runs[0] is not None:
            assert stats["start_time"] == runs[0]["start_time"] and stats["img2dataset_version"] == "1.47.0"
    assert 0 < kept_duration < len(tables)  # both cases occur: one input (copied) and several (dropped)


def test_parquet_columns_that_disagree_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    _img2dataset_shard(tmp_path / "src", 0, 6, rng)
    _img2dataset_shard(tmp_path / "src", 1, 6, rng)
    t = pq.read_table(tmp_path / "src" / "00001.parquet")  # width becomes a string where shard 0 has int32
    pq.write_table(t.set_column(t.schema.get_field_index("width"), "width", pa.array(["wide"] * len(t))),
                   tmp_path / "src" / "00001.parquet")
    keys = _write_keys(tmp_path / "k.parquet", [f"{s:05d}{i:04d}" for s in range(2) for i in range(6)])
    with pytest.raises(InputError, match="00001.parquet.*does not agree"):
        subset(keys, [tmp_path / "src"], tmp_path / "out", workers=0)
    pq.write_table(t.drop_columns(["key"]), tmp_path / "src" / "00001.parquet")
    with pytest.raises(InputError, match="no string column 'key'"):
        subset(keys, [tmp_path / "src"], tmp_path / "out2", workers=0)


# -- refusals: keys no sample can have, samples without an image, damaged or refused inputs ----
@pytest.mark.parametrize("listing,keys,where,problem", [
    ("keys.parquet", ["000000001", "000000002\0"], "row 1", "NUL"),
    ("keys.txt", ["000000001", "", "000000002.jpg"], "line 3", r"'\.' after its last '/'"),
], ids=["nul-in-parquet", "extension-in-txt"])
def test_a_key_no_sample_can_have_is_refused_before_anything_is_written(tmp_path, listing, keys, where, problem):
    """A trailing NUL would vanish in the numpy key arrays and select sample 000000002; a dot
    ends a key. Both are refused naming the file and row, and no output folder is made."""
    write_shards(tmp_path / "src", n_shards=1, per_shard=4)
    path = tmp_path / listing
    if listing.endswith(".txt"):
        path.write_text("\n".join(keys) + "\n")
    else:
        _write_keys(path, keys)
    with pytest.raises(InputError, match=rf"{listing}: {where}.*{problem}") as caught:
        subset(path, [tmp_path / "src"], tmp_path / "out", workers=0)
    assert type(caught.value) is InputError
    assert not (tmp_path / "out").exists()


def test_a_sample_without_an_image_is_skipped_and_listed(tmp_path):
    """A requested sample with only a caption is not copied nor counted for open_clip; it is
    listed in skipped.parquet. A key without an image in one input but with one in a later
    input is written from that one."""
    rng = np.random.default_rng(3)
    members = {"00000.tar": {"000000000": ("jpg", "txt"), "000000001": ("txt",), "000000002": ("png", "json"),
                             "000000003": ("txt", "json")},
               "00001.tar": {"000000003": ("jpg", "txt"), "000010000": ("json",)}}
    (tmp_path / "src").mkdir()
    data = {}
    for tar_name, samples in members.items():
        with tarfile.open(tmp_path / "src" / tar_name, "w", format=tarfile.PAX_FORMAT) as tf:
            for key, exts in samples.items():
                for ext in exts:
                    payload = data[(tar_name, f"{key}.{ext}")] = rng.bytes(int(rng.integers(10, 900)))
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    wanted = ["000000000", "000000001", "000000002", "000000003", "000010000", "nowhere"]
    manifest = subset(_write_keys(tmp_path / "keys.parquet", wanted), [tmp_path / "src"], tmp_path / "out", workers=0)
    got, order = _members(tmp_path / "out" / "00000.tar")
    assert order == ["000000000", "000000002", "000000003"]
    assert got["000000003"] == [(n, data[("00001.tar", n)]) for n in ("000000003.jpg", "000000003.txt")]
    skipped = pq.read_table(tmp_path / "out" / "skipped.parquet").to_pydict()
    assert skipped["key"] == ["000000001", "000010000"]
    assert skipped["source_shard"] == ["00000.tar", "00001.tar"]
    assert all("no image member" in r for r in skipped["reason"])
    assert pq.read_table(tmp_path / "out" / "missing.parquet").column("key").to_pylist() == ["nowhere"]
    assert json.loads((tmp_path / "out" / "openclip.json").read_text())["train_num_samples"] == 3
    c = manifest["counts"]
    assert (c["written"], c["skipped"], c["missing"]) == (3, 2, 1)
    assert pq.read_table(tmp_path / "out" / "written.parquet").column("key").to_pylist() == order


def test_truncated_input_is_refused_naming_the_first_lost_sample(tmp_path):
    (tar,) = write_shards(tmp_path / "src", n_shards=1, per_shard=8)
    with tarfile.open(tar) as tf:
        fifth = next(m for m in tf.getmembers() if m.name.startswith("000000004."))
    tar.write_bytes(tar.read_bytes()[: fifth.offset_data + fifth.size // 2])
    with pytest.raises(TruncatedShardError, match=rf"byte {fifth.offset}\b.*'000000004'") as caught:
        subset(_write_keys(tmp_path / "keys.parquet", ["000000001"]), [tmp_path / "src"], tmp_path / "out", workers=0)
    assert (caught.value.first_lost, caught.value.offset) == ("000000004", fifth.offset)


@pytest.mark.timeout(60)  # before the fix the pool's result thread died and the run waited forever
def test_a_refusal_in_a_worker_process_arrives_as_the_same_input_error(tmp_path):
    write_shards(tmp_path / "src", n_shards=1, per_shard=3)
    _evil_tar(tmp_path / "src" / "00001.tar", "../000000001.jpg")
    keys = _write_keys(tmp_path / "keys.parquet", ["000000001"])
    with pytest.raises(InputError, match=r"00001\.tar: member '\.\./000000001\.jpg' has a path that escapes its folder"):
        subset(keys, [tmp_path / "src"], tmp_path / "out", workers=1)  # a pool of one: two tasks
    assert not list((tmp_path / "out").glob("*.tar"))
