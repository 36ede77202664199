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
from typer.testing import CliRunner

import oodlab.cli.subsets  # noqa: F401  (registers the commands)
from oodlab.cli._app import app
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
    manifest = subset(_write_keys(tmp_path / "keys.parquet", requested), [root / "src"], tmp_path / "out", per_shard=7)
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
    assert subset(tmp_path / "keys.parquet", [root / "src"], out, per_shard=7) == manifest
    with pytest.raises(InputError, match="other keys"):
        subset(_write_keys(tmp_path / "k2.parquet", wanted[:5]), [root / "src"], out, per_shard=7)


def test_workers_do_not_change_the_output_and_text_keys(source, tmp_path):
    root, _, order = source
    (tmp_path / "keys.txt").write_text("\n".join(order[::3]) + "\n\n")
    subset(tmp_path / "keys.txt", [str(root / "src" / "{00000..00003}.tar")], tmp_path / "a", per_shard=5, workers=1)
    subset(tmp_path / "keys.txt", [str(root / "src" / "{00000..00003}.tar")], tmp_path / "b", per_shard=5, workers=2)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if k != "openclip.json"} == {k: v for k, v in b.items() if k != "openclip.json"}


def test_kill_and_resume_is_byte_identical(tmp_path, monkeypatch):
    write_shards(tmp_path / "src", n_shards=24, per_shard=12, seed=2)
    keys = [f"{s:05d}{i:04d}" for s in range(24) for i in range(0, 12, 2)]
    _write_keys(tmp_path / "keys.parquet", keys)
    call = (f"from oodlab.subsets import subset; subset({str(tmp_path / 'keys.parquet')!r}, "
            f"[{str(tmp_path / 'src')!r}], 'out', per_shard=3)")
    for name in ("clean", "killed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "clean")
    subset(tmp_path / "keys.parquet", [tmp_path / "src"], "out", per_shard=3)
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
                   lambda: subset(tmp_path / "keys.parquet", [tmp_path / "evil.tar"], tmp_path / "out")):
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
    manifest = subset(_write_keys(tmp_path / "keys.parquet", wanted), [tmp_path / "src"], tmp_path / "out", per_shard=10)
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
               [tmp_path / "b" / "00000.tar", tmp_path / "a" / "00000.tar"], tmp_path / "out", per_shard=10)
    assert m["counts"]["written"] == 2 and m["counts"]["duplicate_source_keys"] == 2
    got, _ = _members(tmp_path / "out" / "00000.tar")
    want, _ = _members(tmp_path / "b" / "00000.tar")  # the first input given wins
    assert got == {k: want[k] for k in ("000000001", "000000003")}


def test_cli_subset(source, tmp_path):
    root, _, order = source
    _write_keys(tmp_path / "k.parquet", order[:30])
    result = CliRunner().invoke(app, ["subset", str(tmp_path / "k.parquet"), "--shards", str(root / "src"),
                                      "--out", str(tmp_path / "out"), "--per-shard", "8"])
    assert result.exit_code == 0, result.output
    assert [len(_members(t)[1]) for t in sorted((tmp_path / "out").glob("*.tar"))] == [8, 8, 8, 6]
