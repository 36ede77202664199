import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oodlab.data.shard_writer import ShardWriter
from oodlab.embeddings.embed import embed
from oodlab.embeddings.store import EmbeddingStore
from oodlab.embeddings.validate import store_validate
from oodlab.models import load_model
from oodlab.utils.errors import IncompatibleError, InputError
from tests.helpers import jpeg_bytes, kill_9_midway, tree_bytes, write_image_folder, write_shards

REPO = Path(__file__).resolve().parents[1]


def _reference_image_embeddings(paths, model="tiny-vit"):
    """Independent computation: open_clip's own preprocess + encode_image, one image at a time."""
    loaded = load_model(model)
    out = []
    with torch.inference_mode():
        for p in paths:
            x = loaded.preprocess(Image.open(p).convert("RGB")).unsqueeze(0)
            f = loaded.model.encode_image(x)[0].numpy()
            out.append(f / np.linalg.norm(f))
    return np.stack(out)


def test_folder_embeddings_match_open_clip(tmp_path):
    write_image_folder(tmp_path / "imgs", {"cat": 5, "dog": 4})
    sidecar = embed([tmp_path / "imgs"], tmp_path / "store", images_per_part=4, workers=0, batch_size=3)
    store = EmbeddingStore(tmp_path / "store")
    emb, keys = store.read_all()
    paths = [tmp_path / "imgs" / k for k in keys]
    ref = _reference_image_embeddings(paths)
    assert np.abs(emb - ref).max() < 2e-3  # float16 storage
    meta = store.read_metadata().to_pandas()
    assert meta["image_path"].tolist() == sorted(keys.tolist())
    assert meta["class_name"].tolist() == [k.split("/")[0] for k in keys]
    assert meta["label"].tolist() == [0] * 5 + [1] * 4
    assert sidecar["count"] == 9 and len(sidecar["parts"]) == 3 and sidecar["model"]["architecture"] == "tiny-vit"
    assert store_validate(tmp_path / "store") == []


def test_shard_text_embeddings_match_open_clip(tmp_path):
    write_shards(tmp_path / "shards", 2, 5)
    embed([str(tmp_path / "shards" / "{00000..00001}.tar")], tmp_path / "store", text=True, workers=2, batch_size=4)
    store = EmbeddingStore(tmp_path / "store")
    text, keys = store.read_all(text=True)
    meta = store.read_metadata().to_pandas()
    loaded = load_model("tiny-vit")
    with torch.inference_mode():
        ref = loaded.model.encode_text(loaded.tokenizer(meta["caption"].tolist())).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(text - ref).max() < 2e-3
    assert keys.tolist() == [f"{s:05d}{i:04d}" for s in range(2) for i in range(5)]
    assert meta["label"].tolist() == [i % 3 for _ in range(2) for i in range(5)]  # json fields become columns


def test_corrupt_images_are_skipped_and_listed(tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 3})
    (tmp_path / "imgs" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    good = (tmp_path / "imgs" / "a" / "a_000.jpg").read_bytes()
    (tmp_path / "imgs" / "a" / "cut.jpg").write_bytes(good[: len(good) // 2])
    sidecar = embed([tmp_path / "imgs"], tmp_path / "store", workers=0)
    assert sidecar["count"] == 3
    assert sorted(s["key"] for s in sidecar["skipped"]) == ["a/broken.jpg", "a/cut.jpg"]
    assert all(s["reason"] for s in sidecar["skipped"])


def test_truncated_tar_is_reported_by_name(tmp_path):
    paths = write_shards(tmp_path / "shards", 2, 6)
    with tarfile.open(paths[1]) as tar:
        members = tar.getmembers()
    # cut inside the data of the 4th sample's first member: its header is readable, so the three
    # samples before it are provably complete
    first_of_4th = next(m for m in members if m.name.startswith("000010003."))
    cut = first_of_4th.offset_data + first_of_4th.size // 2
    complete = {m.name.split(".")[0] for m in members} - {m.name.split(".")[0] for m in members if m.offset_data + m.size > cut}
    assert len(complete) == 3
    paths[1].write_bytes(paths[1].read_bytes()[:cut])
    sidecar = embed([tmp_path / "shards"], tmp_path / "store", workers=0)
    (trunc,) = sidecar["truncated_shards"]
    assert trunc["source"] == str(paths[1]) and "00001.tar" in trunc["error"]
    # the first sample lost and where: the header tarfile reports for the member cut short
    assert (trunc["first_lost_key"], trunc["offset"]) == ("000010003", first_of_4th.offset)
    record = json.loads((tmp_path / "store" / "stats" / "part_1.json").read_text())
    assert (record["truncated"]["first_lost_key"], record["truncated"]["offset"]) == ("000010003", first_of_4th.offset)
    assert sidecar["count"] == 6 + len(complete)  # all of shard 0 and the complete samples of shard 1
    _, keys = EmbeddingStore(tmp_path / "store").read_all()
    assert set(keys[6:]) == complete


def test_missing_caption_is_recorded_not_invented(tmp_path, monkeypatch):
    import oodlab.embeddings.embed as embed_module

    rng = np.random.default_rng(0)
    no_txt = {"000000001", "000000004"}
    with ShardWriter(tmp_path / "shards", "00000") as w:
        for i in range(6):
            key = f"00000{i:04d}"
            members = {"jpg": jpeg_bytes(rng)}
            if key not in no_txt:
                members["txt"] = f"a photo of item {i}".encode()
            w.write(key, members, {"caption": None if key in no_txt else f"a photo of item {i}"})
    lines = []
    monkeypatch.setattr(embed_module, "summary", lines.append)
    sidecar = embed([tmp_path / "shards"], tmp_path / "store", text=True, workers=0, batch_size=4)
    store = EmbeddingStore(tmp_path / "store")
    text, keys = store.read_all(text=True)
    captions = store.read_metadata().column("caption").to_pylist()
    missing = np.isin(keys, list(no_txt))
    assert [c is None for c in captions] == missing.tolist()
    assert not text[missing].any()  # the all-zero marker, not the embedding of ""
    loaded = load_model("tiny-vit")
    with torch.inference_mode():
        ref = loaded.model.encode_text(loaded.tokenizer([c for c in captions if c is not None])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.abs(text[~missing] - ref).max() < 2e-3
    assert len(store.read_all()[0]) == 6  # the images stay
    source = str(tmp_path / "shards" / "00000.tar")
    assert sorted(sidecar["missing_text"], key=lambda e: e["key"]) == [{"key": k, "source": source} for k in sorted(no_txt)]
    record = json.loads((tmp_path / "store" / "stats" / "part_0.json").read_text())
    assert sorted(record["missing_text"]) == sorted(no_txt)
    assert ", 2 without caption" in lines[-1]
    assert store_validate(tmp_path / "store") == []


@pytest.mark.slow
def test_kill_9_then_resume_equals_clean_run(tmp_path):
    n_shards = 16
    write_shards(tmp_path / "shards", n_shards, 12)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "oodlab", "embed", "--data", str(tmp_path / "shards"), "--out", str(out), "--workers", "0",
           "--batch-size", "1"]
    done_before = kill_9_midway(cmd, lambda: len(list((out / "stats").glob("part_*.json"))), 2, REPO)
    assert 2 <= done_before < n_shards, "the kill must land mid-run"
    assert not (out / "oodlab.json").exists()
    sidecar = embed([tmp_path / "shards"], out, workers=0, batch_size=1)
    clean = tmp_path / "clean"
    embed([tmp_path / "shards"], clean, workers=0, batch_size=1)
    killed, fresh = tree_bytes(out), tree_bytes(clean)
    assert killed.keys() == fresh.keys()  # no temporaries left behind
    assert killed == fresh
    assert sidecar["count"] == n_shards * 12


def test_resume_refuses_another_model(tmp_path):
    write_image_folder(tmp_path / "imgs", {"a": 3})
    embed([tmp_path / "imgs"], tmp_path / "store", workers=0)
    with pytest.raises(IncompatibleError, match=r"inputs\.model\.architecture \('tiny-vit' before, 'tiny-rn' now\)"):
        embed([tmp_path / "imgs"], tmp_path / "store", model="tiny-rn", workers=0)
    embed([tmp_path / "imgs"], tmp_path / "store", model="tiny-rn", workers=0, overwrite=True)
    assert EmbeddingStore(tmp_path / "store").model["architecture"] == "tiny-rn"


def test_duplicate_keys_across_sources_are_refused(tmp_path):
    write_image_folder(tmp_path / "x", {"a": 2})
    write_image_folder(tmp_path / "y", {"a": 2}, seed=1)
    with pytest.raises(InputError, match="keys occur more than once"):
        embed([tmp_path / "x", tmp_path / "y"], tmp_path / "store", workers=0)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        embed([tmp_path / "nothing-{0..3}.tar"], tmp_path / "store")
    write_image_folder(tmp_path / "imgs", {"a": 1})
    with pytest.raises(InputError, match="needs captions"):
        embed([tmp_path / "imgs"], tmp_path / "store", text=True)


def test_member_refused_in_a_worker_arrives_as_the_same_input_error(tmp_path):
    """A refusal raised in a DataLoader worker is the InputError the CLI prints, not torch's
    RuntimeError with the worker's traceback."""
    write_shards(tmp_path / "shards", 1, 2)
    with tarfile.open(tmp_path / "shards" / "00001.tar", "w") as tar:
        info = tarfile.TarInfo("../000010000.jpg")
        data = jpeg_bytes(np.random.default_rng(0))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match=r"00001\.tar: member '\.\./000010000\.jpg' has a path that escapes its folder") as caught:
        embed([tmp_path / "shards"], tmp_path / "store", workers=1)
    assert type(caught.value) is InputError and caught.value.fix is not None


@pytest.mark.parametrize("argument", [{"batch_size": 0}, {"batch_size": -3}, {"workers": -1}, {"images_per_part": 0}],
                         ids=lambda a: "=".join(map(str, *a.items())))
def test_bad_batch_size_workers_or_part_size_are_refused_before_anything_is_loaded(tmp_path, monkeypatch, argument):
    import oodlab.models

    write_shards(tmp_path / "shards", 1, 2)
    monkeypatch.setattr(oodlab.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    ((name, value),) = argument.items()
    with pytest.raises(InputError, match=rf"{name}={value} is below"):
        embed([tmp_path / "shards"], tmp_path / "store", **argument)
    assert not (tmp_path / "store").exists()
