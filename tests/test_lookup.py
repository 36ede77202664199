"""Image lookup by key: exact bytes against the tar members / files, only the needed shards read."""

import io
import tarfile

import pytest

import oodlab.data.lookup as lookup
from oodlab.data.lookup import iter_images, read_images
from oodlab.data.shard_writer import make_key
from oodlab.utils.errors import InputError
from tests.helpers import write_image_folder, write_shards


def _member(tar_path, key, ext="jpg"):
    """Independent read of one member with tarfile."""
    with tarfile.open(tar_path) as tar:
        return tar.extractfile(f"{key}.{ext}").read()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path / "shards", n_shards=3, per_shard=6, seed=1)


def test_shard_keys_give_the_member_bytes(shards):
    keys = [make_key(2, 5), make_key(0, 0), make_key(0, 3)]
    got = read_images(keys, [shards[0].parent])
    assert set(got) == set(keys)
    for key in keys:
        assert got[key] == _member(shards[int(key[:5])], key)


def test_only_the_shards_that_can_hold_the_keys_are_read(shards, monkeypatch):
    shards[1].write_bytes(b"this is not a tar" * 100)  # unrelated shard: reading it would fail
    keys = [make_key(0, 1), make_key(2, 4)]
    opened = []
    real = lookup.iter_tar_samples
    monkeypatch.setattr(lookup, "iter_tar_samples", lambda p: (opened.append(p.name), real(p))[1])
    pattern = str(shards[0].parent / "{00000..00002}.tar")  # brace pattern source
    got = read_images(keys, pattern)
    assert got == {k: _member(shards[int(k[:5])], k) for k in keys}
    assert sorted(opened) == ["00000.tar", "00002.tar"]


def test_a_tar_is_left_once_its_keys_are_found(shards):
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # damage after the first samples
    key = make_key(0, 0)
    assert read_images([key], shards)[key] == _member_from_bytes(data, key)
    with pytest.raises(InputError, match="truncated"):
        read_images([make_key(0, 5)], shards)  # lies beyond the damage


def _member_from_bytes(data, key):
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(f"{key}.jpg").read()


def test_keys_outside_their_named_shard_are_found_by_scanning(shards, tmp_path):
    # a re-sharded subset keeps the original keys under new shard names
    key_a, key_b = make_key(1, 2), make_key(7, 0)
    (tmp_path / "sub").mkdir()
    _tar(tmp_path / "sub" / "00000.tar", {f"{key_a}.jpg": b"A", f"{key_a}.txt": b"caption"})
    _tar(tmp_path / "sub" / "subset.tar", {f"{key_b}.png": b"B", "other/x.jpg": b"X"})
    assert read_images([key_a, key_b, "other/x"], tmp_path / "sub") == {key_a: b"A", key_b: b"B", "other/x": b"X"}


def test_missing_keys_are_refused_with_examples(shards):
    with pytest.raises(InputError, match=r"2 requested images.*000009999.*nope"):
        read_images([make_key(0, 1), "000009999", "nope"], shards)
    # every found key was yielded before the error
    found = []
    with pytest.raises(InputError):
        for key, _ in iter_images([make_key(0, 1), "nope"], shards):
            found.append(key)
    assert found == [make_key(0, 1)]


def test_image_folder_keys_read_the_files(tmp_path, shards):
    root = tmp_path / "val"
    write_image_folder(root, {"n1": 3, "n2": 2}, seed=3)
    keys = ["n1/n1_002.jpg", "n2/n2_000.jpg"]
    got = read_images(keys + [make_key(1, 1)], [root, shards[1]])  # mixed sources
    for key in keys:
        assert got[key] == (root / key).read_bytes()
    assert got[make_key(1, 1)] == _member(shards[1], make_key(1, 1))
    (tmp_path / "secret.jpg").write_bytes(b"s")
    with pytest.raises(InputError, match="requested images"):
        read_images(["../secret.jpg"], root)  # keys never escape the root


def test_traversal_members_and_bad_sources_are_refused(tmp_path):
    (tmp_path / "evil").mkdir()
    _tar(tmp_path / "evil" / "00000.tar", {"../000000001.jpg": b"x"})
    with pytest.raises(InputError, match="escapes"):
        read_images(["000000001"], tmp_path / "evil")
    assert not (tmp_path / "000000001.jpg").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither"):
        read_images(["a"], tmp_path / "empty")
    with pytest.raises(InputError, match="matches no file"):
        read_images(["a"], tmp_path / "missing" / "{0..1}.tar")
    _tar(tmp_path / "evil" / "00001.tar", {"000010000.txt": b"caption only"})
    with pytest.raises(InputError, match="no image member"):
        read_images(["000010000"], tmp_path / "evil" / "00001.tar")
