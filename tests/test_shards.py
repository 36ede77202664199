import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from oodlab.data.shard_writer import ShardWriter, make_key, shard_complete
from oodlab.data.shards import iter_tar_samples
from oodlab.data.tarformat import TruncatedShardError, split_member_name
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
