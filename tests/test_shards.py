import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from oodlab.data.lookup import read_images
from oodlab.data.shard_writer import ShardWriter, make_key, shard_complete
from oodlab.data.shards import _stream_tar_samples, iter_tar_samples
from oodlab.data.tarformat import TruncatedShardError, is_housekeeping, split_member_name
from oodlab.data.tarindex import index_tar
from oodlab.train.data import resolve_train_data
from oodlab.utils.errors import InputError
from tests.helpers import write_shards


def test_make_key_is_img2dataset_layout():
    assert make_key(12, 34) == "000120034"
    assert len(make_key(0, 9999)) == 9
    assert make_key(3, 5, per_shard=100) == "0000305"
    with pytest.raises(ValueError):
        make_key(0, 10_000)


@pytest.mark.parametrize(
    "name,expected",
    [("000010002.jpg", ("000010002", "jpg")), ("a/b/c.seg.png", ("a/b/c", "seg.png")), ("x.txt", ("x", "txt"))],
)
def test_split_member_name_follows_webdataset(name, expected):
    assert split_member_name(name) == expected


def test_round_trip_bytes_and_order(tmp_path):
    members = {f"{i:09d}": {"jpg": bytes([i]) * (100 + i), "txt": f"cap {i}".encode()} for i in range(5)}
    with ShardWriter(tmp_path, "00000") as w:
        for key, m in members.items():
            w.write(key, m, {"caption": m["txt"].decode(), "status": "success"})
    assert shard_complete(tmp_path, "00000")
    got = list(iter_tar_samples(tmp_path / "00000.tar"))
    assert [s.key for s in got] == list(members)
    assert [s.members for s in got] == list(members.values())
    # the tar is readable by the standard library and holds exactly the members written
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getnames() == [f"{k}.{e}" for k, m in members.items() for e in m]


def test_shards_are_byte_deterministic(tmp_path):
    write_shards(tmp_path / "a", 2, 5, seed=1)
    write_shards(tmp_path / "b", 2, 5, seed=1)
    for name in ("00000.tar", "00001.tar", "00000.parquet", "00001_stats.json"):
        a, b = (tmp_path / d / name for d in ("a", "b"))
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), name


def test_aborted_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "00000") as w:
            w.write("000000000", {"txt": b"x"})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_key_in_shard_refused(tmp_path):
    w = ShardWriter(tmp_path, "00000")
    w.write("000000000", {"txt": b"x"})
    with pytest.raises(InputError, match="duplicate key"):
        w.write("000000000", {"txt": b"y"})
    w.abort()


def test_truncated_tar_reports_name_after_complete_samples(tmp_path):
    (path,) = write_shards(tmp_path, 1, 6)
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(TruncatedShardError, match="cut.tar"):
        for s in iter_tar_samples(cut):
            got.append(s)
    full = list(iter_tar_samples(path))
    assert 1 <= len(got) < 6
    # every yielded sample is complete and identical to the original
    assert [s.members for s in got] == [s.members for s in full[: len(got)]]


def _tar_with(tmp_path: Path, build) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        build(tar)
    return path


@pytest.mark.parametrize("name", ["../escape.jpg", "/abs/path.jpg", "a/../../b.txt"])
def test_member_escaping_folder_refused(tmp_path, name):
    def build(tar):
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))

    with pytest.raises(InputError, match="escapes"):
        list(iter_tar_samples(_tar_with(tmp_path, build)))


def test_link_member_refused(tmp_path):
    def build(tar):
        info = tarfile.TarInfo("000000000.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    with pytest.raises(InputError, match="link"):
        list(iter_tar_samples(_tar_with(tmp_path, build)))


def test_compressed_and_global_header_tars_read_like_plain_ones(tmp_path):
    """The compiled index serves plain tars; gzip and pax-global-header tars go through tarfile:
    all three give the samples a hand-built tar holds."""
    members = {f"{i:09d}": {"jpg": bytes([i]) * (700 + i), "txt": f"cap {i}".encode()} for i in range(4)}

    def build(path: Path, mode: str, **kw) -> None:
        with tarfile.open(path, mode, **kw) as tar:
            for key, m in members.items():
                for ext, data in m.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    build(tmp_path / "plain.tar", "w")
    build(tmp_path / "z.tar.gz", "w:gz")
    build(tmp_path / "g.tar", "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"})
    for name in ("plain.tar", "z.tar.gz", "g.tar"):
        got = list(iter_tar_samples(tmp_path / name))
        assert [(s.key, s.members) for s in got] == list(members.items()), name


# -- member extensions and housekeeping members --------------------------------------------------
def _tar_of(path: Path, names: list[str], fmt: int = tarfile.PAX_FORMAT, **given: bytes) -> dict[str, bytes]:
    """Write regular members ``names`` (in order; random bytes unless ``given[name]``) with tarfile
    and return {name: bytes}."""
    rng = np.random.default_rng(len(names))
    data = {name: given.get(name, rng.bytes(int(rng.integers(1, 900)))) for name in names}
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, payload in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return data


def _readers(path: Path) -> dict[str, Path]:
    """The plain tar (read through the compiled index) and a gzip copy (tarfile's streaming path)."""
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes()))
    return {"index": path, "tarfile": gz}


def _webdataset_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(path, "rb") as stream:
        samples = list(group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}])))
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT], ids=["pax", "gnu", "ustar"])
def test_upper_case_extensions_and_underscore_keys_read_as_webdataset_does(tmp_path, fmt):
    """Extensions match case-insensitively (webdataset's group_by_keys lower-cases them) and a key
    that only starts with ``__`` is a sample; ``__x__`` is housekeeping. Long names (pax, GNU,
    ustar prefix) take the index's Python path, short ones the compiled one."""
    long = "d" * 80 + "/" + "b" * 60
    names = ["000000000.JPG", "000000000.TXT", "000000000.Json", "__x__", "000000001.jpeg", "000000001.Txt",
             "__notes.jpg", "__notes.TXT", "__a_b.PNG", "__a_b.txt", "d/k.Seg.PNG", "d/k.WebP",
             f"{long}.JPG", f"{long}.TXT", "000000002.jpg", "000000002.txt"]
    data = _tar_of(tmp_path / "t.tar", names, fmt, **{"000000000.Json": b'{"label": 3}'})
    expected = _webdataset_samples(tmp_path / "t.tar")
    assert [k for k, _ in expected] == ["000000000", "000000001", "__notes", "__a_b", "d/k", long, "000000002"]
    for reader, path in _readers(tmp_path / "t.tar").items():
        got = list(iter_tar_samples(path))
        assert [(s.key, s.members) for s in got] == expected, reader
        # the caption and image roles pick the upper-case members
        captions = ["000000000.TXT", "000000001.Txt", "__notes.TXT", "__a_b.txt", None, f"{long}.TXT", "000000002.txt"]
        assert [s.caption for s in got] == [None if n is None else data[n].decode("utf-8", "replace") for n in captions]
        images = ["000000000.JPG", "000000001.jpeg", "__notes.jpg", "__a_b.PNG", "d/k.WebP", f"{long}.JPG", "000000002.jpg"]
        assert [s.image for s in got] == [data[n] for n in images]
        assert got[0].meta == {"label": 3}
    # tarfile's streaming path on the plain tar too (its end-of-archive check is for plain tars only)
    assert [(s.key, s.members) for s in _stream_tar_samples(tmp_path / "t.tar")] == expected


def test_housekeeping_is_a_base_name_of_the_form_dunder_x_dunder(tmp_path):
    """Only a key whose base name starts and ends with ``__`` around something is skipped (the
    expectation below is written by hand from the member list; webdataset's own rule differs:
    it keeps ``__x__.json`` and skips ``__x__/...`` folders). Long names (pax) take the index's
    Python path, short ones the compiled walk."""
    long = "d" * 120
    names = ["__x__.json", "__notes.jpg", "__notes.txt", "dir/__meta__.TXT", "__.jpg", "____.jpg", "_____.jpg",
             "a__.jpg", "__x__/a.jpg", "__x___y.txt", "k.jpg", "__info__.seg.png", f"{long}/__meta__.json",
             f"{long}/__notes.jpg"]
    data = _tar_of(tmp_path / "t.tar", names)
    expected = [("__notes", {"jpg": "__notes.jpg", "txt": "__notes.txt"}), ("__", {"jpg": "__.jpg"}),
                ("____", {"jpg": "____.jpg"}), ("a__", {"jpg": "a__.jpg"}), ("__x__/a", {"jpg": "__x__/a.jpg"}),
                ("__x___y", {"txt": "__x___y.txt"}), ("k", {"jpg": "k.jpg"}),
                (f"{long}/__notes", {"jpg": f"{long}/__notes.jpg"})]
    expected = [(key, {e: data[n] for e, n in m.items()}) for key, m in expected]
    for reader, path in _readers(tmp_path / "t.tar").items():
        assert [(s.key, s.members) for s in iter_tar_samples(path)] == expected, reader
    assert [is_housekeeping(k) for k in ("__x__", "d/__x__", "__notes", "__", "____", "_____", "a__", "__x__/a")] == \
        [True, True, False, False, False, True, False, False]


def test_extensions_differing_only_in_case_are_one_extension(tmp_path):
    """``a.jpg`` and ``a.JPG`` are two jpg members of one sample: refused by both readers, as
    webdataset refuses them."""
    _tar_of(tmp_path / "t.tar", ["a.txt", "a.jpg", "a.JPG"])
    with pytest.raises(ValueError, match="duplicate"):
        _webdataset_samples(tmp_path / "t.tar")
    for path in _readers(tmp_path / "t.tar").values():
        with pytest.raises(InputError, match="two 'jpg' members"):
            list(iter_tar_samples(path))
    with pytest.raises(InputError, match="two 'jpg' members"):
        index_tar(tmp_path / "t.tar")


def test_image_lookup_and_train_count_see_upper_case_members(tmp_path):
    data = _tar_of(tmp_path / "00000.tar", ["000000000.JPG", "000000000.TXT", "000000001.Png", "000000002.jpg"])
    assert read_images(["000000000", "000000001"], tmp_path / "00000.tar") == \
        {"000000000": data["000000000.JPG"], "000000001": data["000000001.Png"]}
    assert resolve_train_data(tmp_path / "00000.tar").count == 1  # only 000000000 has an image and a caption


# -- truncated tars: what survives, what is reported lost ----------------------------------------
def _cut_in_sample_5(tmp_path: Path, member: int) -> tuple[Path, list[tuple[str, dict[str, bytes]]], tarfile.TarInfo]:
    """A tar of 8 samples written with tarfile, cut in the data of the ``member``-th member of
    sample 5; returns (the cut tar, samples 1-4 as tarfile reads them, the member cut short)."""
    rng = np.random.default_rng(5)
    keys = [f"{i:09d}" for i in range(8)]
    _tar_of(tmp_path / "whole.tar", [f"{k}.{e}" for k in keys for e in ("jpg", "txt", "json")],
            **{f"{k}.jpg": rng.bytes(1500) for k in keys})
    with tarfile.open(tmp_path / "whole.tar") as tar:
        infos = tar.getmembers()
        complete = [(k, {m.name.split(".")[1]: tar.extractfile(m).read() for m in infos if m.name.startswith(f"{k}.")})
                    for k in keys[:4]]
    cut_member = [m for m in infos if m.name.startswith(f"{keys[4]}.")][member]
    cut = tmp_path / "cut.tar"
    cut.write_bytes((tmp_path / "whole.tar").read_bytes()[: cut_member.offset_data + cut_member.size // 2])
    return cut, complete, cut_member


@pytest.mark.parametrize("member", [0, 1], ids=["first-member", "second-member"])
def test_tar_cut_in_sample_5_yields_sample_4_and_names_the_first_lost_sample(tmp_path, member):
    """Both readers (the index falls back to tarfile's streaming one for a damaged tar; gzip goes
    there directly) yield samples 1-4 complete and report sample 5 lost, with the offset of the
    header of the member cut short (tarfile's); index_tar reports the same."""
    cut, complete, cut_member = _cut_in_sample_5(tmp_path, member)
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(gzip.compress(cut.read_bytes()))
    for path in (cut, gz):
        got = []
        with pytest.raises(TruncatedShardError) as caught:
            for sample in iter_tar_samples(path):
                got.append((sample.key, sample.members))
        assert got == complete, path.name
        assert (caught.value.first_lost, caught.value.offset) == ("000000004", cut_member.offset), path.name
        assert "'000000004'" in str(caught.value) and f"byte {cut_member.offset}" in str(caught.value)
    with pytest.raises(TruncatedShardError) as caught:
        index_tar(cut)
    assert (caught.value.first_lost, caught.value.offset) == ("000000004", cut_member.offset)


def test_tar_that_shrinks_while_read_through_its_index_names_the_first_lost_sample(tmp_path):
    """The compiled-index path reads an intact tar; cut while it is read, it has yielded samples
    1-4 and reports sample 5, at its first header (tarfile's offset)."""
    cut, complete, cut_member = _cut_in_sample_5(tmp_path, 0)
    whole = tmp_path / "whole.tar"
    samples = iter_tar_samples(whole)
    got = [next(samples) for _ in range(4)]
    assert [(s.key, s.members) for s in got] == complete
    os.truncate(whole, cut.stat().st_size)
    with pytest.raises(TruncatedShardError) as caught:
        next(samples)
    assert (caught.value.first_lost, caught.value.offset) == ("000000004", cut_member.offset)


def test_member_name_with_a_nul_is_refused(tmp_path):
    """Only a pax header can carry a NUL in a name; numpy key arrays would drop a trailing one."""
    with tarfile.open(tmp_path / "t.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("000000000.jpg", "000000001\0.jpg"):
            info = tarfile.TarInfo("placeholder.jpg")
            info.pax_headers = {"path": name}
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    with tarfile.open(tmp_path / "t.tar") as tar:
        assert tar.getnames() == ["000000000.jpg", "000000001\0.jpg"]  # the tar really holds it
    for path in _readers(tmp_path / "t.tar").values():
        with pytest.raises(InputError, match="NUL"):
            list(iter_tar_samples(path))
    with pytest.raises(InputError, match="NUL"):
        index_tar(tmp_path / "t.tar")
