import json

import numpy as np
import pyarrow as pa
import pytest

from oodlab.embeddings import store as st
from oodlab.embeddings.store import EmbeddingStore, find_duplicate_keys, store_info, validate_store
from oodlab.utils.errors import InputError
from tests.helpers import unit_rows, write_clip_retrieval_folder


def _write(path, parts, keys=None, text=False):
    rng = np.random.default_rng(1)
    n_parts = len(parts)
    for i, emb in enumerate(parts):
        k = keys[i] if keys else [f"k{i}_{j}" for j in range(len(emb))]
        meta = pa.table({"image_path": k, "caption": [f"c {x}" for x in k]})
        st.write_part(path, i, n_parts, image=emb, metadata=meta,
                      text=unit_rows(rng, len(emb), emb.shape[1]) if text else None, record={"source": f"s{i}"})


def test_round_trip_in_chunks_never_crossing_parts(tmp_path):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, n, 16) for n in (7, 0, 12, 5)]
    _write(tmp_path, parts)
    store = EmbeddingStore(tmp_path)
    assert store.count == 24 and store.dim == 16 and store.dtype == "float16"
    for chunk_rows in (1, 3, 5, 100):
        chunks = list(store.iter_chunks(chunk_rows))
        assert all(0 < len(c) <= chunk_rows for c in chunks)
        emb = np.concatenate([c.embeddings for c in chunks])
        keys = np.concatenate([c.keys for c in chunks])
        expected = np.concatenate(parts).astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(emb, expected)
        assert keys.tolist() == [f"k{i}_{j}" for i, p in enumerate(parts) for j in range(len(p))]
        assert [c.offset for c in chunks] == [c.start + store.part_offsets()[c.part] for c in chunks]


def test_clip_retrieval_folder_without_sidecar(tmp_path):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, n, 8) for n in (4, 6, 3)]
    keys = [[f"{i:05d}{j:04d}" for j in range(len(p))] for i, p in enumerate(parts)]
    # clip-retrieval pads suffixes (here 2 digits): parts must still come in numeric order
    write_clip_retrieval_folder(tmp_path, parts, keys, width=2)
    store = EmbeddingStore(tmp_path)
    assert [p.suffix for p in store.parts] == ["00", "01", "02"]
    emb, k = store.read_all()
    np.testing.assert_array_equal(emb, np.concatenate(parts).astype(np.float16).astype(np.float32))
    assert k.tolist() == sum(keys, [])
    info = store_info(tmp_path)
    assert info["count"] == 13 and info["dim"] == 8 and info["sidecar"] is False and info["model"] is None
    assert validate_store(tmp_path) == []


def test_configurable_key_column_and_int_keys(tmp_path):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, 5, 8)]
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "img_emb" / "img_emb_0.npy", parts[0].astype(np.float16))
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": np.arange(100, 105), "url": ["u"] * 5}), tmp_path / "metadata" / "metadata_0.parquet")
    with pytest.raises(InputError, match="no key column 'image_path'"):
        EmbeddingStore(tmp_path).read_all()
    _, keys = EmbeddingStore(tmp_path, key_column="key").read_all()
    assert keys.tolist() == ["100", "101", "102", "103", "104"]


def _problems(tmp_path):
    return "\n".join(validate_store(tmp_path))


def test_validate_finds_nan_and_unnormalised_rows(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 6, 8), unit_rows(rng, 6, 8)], [list("abcdef"), list("ghijkl")])
    emb = np.load(tmp_path / "img_emb" / "img_emb_01.npy")
    emb[2, 3] = np.nan
    emb[4] *= 3.0
    np.save(tmp_path / "img_emb" / "img_emb_01.npy", emb)
    text = _problems(tmp_path)
    assert "part 01 (img_emb_01.npy): 1 rows with NaN/inf (first rows [2" in text
    assert "part 01 (img_emb_01.npy): 1 rows not unit-norm" in text
    assert "part 00" not in text


def test_validate_finds_dim_dtype_and_row_mismatches(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 4, 8), unit_rows(rng, 4, 8), unit_rows(rng, 4, 8)],
                                [list("abcd"), list("efgh"), list("ijkl")], width=1)
    np.save(tmp_path / "img_emb" / "img_emb_1.npy", unit_rows(rng, 4, 6).astype(np.float16))
    np.save(tmp_path / "img_emb" / "img_emb_2.npy", unit_rows(rng, 5, 8).astype(np.float32))
    text = _problems(tmp_path)
    assert "part 1 (img_emb_1.npy): dim 6 differs" in text
    assert "part 2 (img_emb_2.npy): dtype float32 differs" in text
    assert "part 2 (img_emb_2.npy): metadata_2.parquet has 4 rows, img_emb has 5" in text


def test_validate_finds_duplicate_keys_across_parts(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 3, 8), unit_rows(rng, 3, 8)], [["a", "b", "c"], ["d", "b", "e"]])
    assert "1 duplicate keys in column 'image_path' (e.g. {'b': 2})" in _problems(tmp_path)


@pytest.mark.parametrize("bucket_rows", [1 << 20, 3])
def test_duplicate_keys_bounded_memory_matches_counter(tmp_path, bucket_rows):
    from collections import Counter

    rng = np.random.default_rng(0)
    keys = [[str(x) for x in rng.integers(0, 40, 25)] for _ in range(3)]
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 25, 4) for _ in range(3)], keys)
    expected = {k: c for k, c in Counter(sum(keys, [])).items() if c > 1}
    assert find_duplicate_keys(EmbeddingStore(tmp_path), chunk_rows=7, bucket_rows=bucket_rows) == expected


def test_missing_metadata_and_not_a_store(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 3, 8)], [["a", "b", "c"]])
    (tmp_path / "metadata" / "metadata_00.parquet").unlink()
    assert "metadata metadata_00.parquet is missing" in _problems(tmp_path)
    with pytest.raises(InputError, match="not an embedding store"):
        EmbeddingStore(tmp_path / "metadata")


def test_sidecar_written_from_part_records(tmp_path):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, 3, 8), unit_rows(rng, 2, 8)]
    _write(tmp_path, parts, text=True)
    records = [st.read_part_record(tmp_path, i, 2) for i in range(2)]
    sidecar = st.write_sidecar(tmp_path, model={"architecture": "x"}, records=records, source=["s"])
    on_disk = json.loads((tmp_path / "oodlab.json").read_text())
    assert on_disk == sidecar and on_disk["count"] == 5 and on_disk["dim"] == 8
    store = EmbeddingStore(tmp_path)
    assert store.has_text and store.model == {"architecture": "x"}
    text, _ = store.read_all(text=True)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=2e-3)
    # the sidecar disagreeing with the parts is reported
    on_disk["count"] = 99
    (tmp_path / "oodlab.json").write_text(json.dumps(on_disk))
    assert "oodlab.json: count 99 but the parts hold 5 rows" in _problems(tmp_path)


def test_incomplete_part_is_not_complete(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, [unit_rows(rng, 3, 8)])
    assert st.read_part_record(tmp_path, 0, 1) is not None
    (tmp_path / "metadata" / "metadata_0.parquet").unlink()
    assert st.read_part_record(tmp_path, 0, 1) is None
