import json

import numpy as np
import pyarrow as pa
import pytest

from oodlab.embeddings import store as st
from oodlab.embeddings.store import EmbeddingStore
from oodlab.embeddings.validate import find_duplicate_keys, store_info, store_validate
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
    assert store_validate(tmp_path) == []


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
    return "\n".join(store_validate(tmp_path))


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


# -- parts discovered by the union of the part files ------------------------------------------------
@pytest.mark.parametrize("remaining", ["metadata", "text", "stats"])
def test_part_without_img_emb_is_refused_and_reported(tmp_path, remaining):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, 3 + i % 4, 8) for i in range(11)]  # 11 parts: suffixes 00..10
    _write(tmp_path, parts, text=True)
    files = {"metadata": tmp_path / "metadata" / "metadata_10.parquet", "text": tmp_path / "text_emb" / "text_emb_10.npy",
             "stats": tmp_path / "stats" / "part_10.json"}
    (tmp_path / "img_emb" / "img_emb_10.npy").unlink()
    for kind, f in files.items():
        if kind != remaining:
            f.unlink()
    with pytest.raises(InputError, match=rf"part 10: img_emb_10.npy is missing \(the part has {files[remaining].name}\)"
                                         r".*Fix: for an oodlab store, re-run the same `oodlab embed`"):
        EmbeddingStore(tmp_path)
    with pytest.raises(InputError, match="part 10: img_emb_10.npy is missing"):
        store_info(tmp_path)
    assert f"part 10: img_emb_10.npy is missing (the part has {files[remaining].name})" in _problems(tmp_path)
    # read leniently, the store is what the remaining img_emb files hold
    lenient = EmbeddingStore(tmp_path, strict=False)
    assert lenient.count == sum(len(np.load(p)) for p in (tmp_path / "img_emb").glob("img_emb_*.npy")) == sum(map(len, parts[:10]))


def test_clip_retrieval_part_without_img_emb_or_metadata_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    parts = [unit_rows(rng, 4, 8) for _ in range(12)]
    write_clip_retrieval_folder(tmp_path, parts, [[f"{i}_{j}" for j in range(4)] for i in range(12)])
    (tmp_path / "img_emb" / "img_emb_10.npy").unlink()
    (tmp_path / "metadata" / "metadata_03.parquet").unlink()
    with pytest.raises(InputError) as err:
        EmbeddingStore(tmp_path)
    assert "part 03 (img_emb_03.npy): metadata metadata_03.parquet is missing" in str(err.value)
    assert "part 10: img_emb_10.npy is missing (the part has metadata_10.parquet)" in str(err.value)
    text = _problems(tmp_path)
    assert "part 10: img_emb_10.npy is missing" in text and "metadata metadata_03.parquet is missing" in text


def test_part_listed_in_sidecar_but_gone_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path, [unit_rows(rng, 3, 8), unit_rows(rng, 2, 8)])
    st.write_sidecar(tmp_path, model=None, records=[st.read_part_record(tmp_path, i, 2) for i in range(2)])
    for f in tmp_path.glob("*/*_1.*"):
        f.unlink()
    with pytest.raises(InputError, match=r"part 1: img_emb_1.npy is missing \(the part has an entry in oodlab.json\)"):
        EmbeddingStore(tmp_path)
    text = _problems(tmp_path)
    assert "part 1: img_emb_1.npy is missing" in text and "oodlab.json: count 5 but the parts hold 3 rows" in text


def test_validate_reports_every_kind_of_problem_at_once(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path, [unit_rows(rng, 4, 8), unit_rows(rng, 4, 8), unit_rows(rng, 3, 8)],
                                [["a", "b", "c", "d"], ["e", "b", "f", "g"], ["h", "i", "j"]])
    np.save(tmp_path / "img_emb" / "img_emb_02.npy", unit_rows(rng, 5, 8).astype(np.float16))  # 5 rows, metadata 3
    emb = np.load(tmp_path / "img_emb" / "img_emb_00.npy")
    emb[1] *= 2
    np.save(tmp_path / "img_emb" / "img_emb_00.npy", emb)
    text = _problems(tmp_path)
    assert "part 02 (img_emb_02.npy): metadata_02.parquet has 3 rows, img_emb has 5" in text
    assert "part 00 (img_emb_00.npy): 1 rows not unit-norm" in text
    assert "1 duplicate keys in column 'image_path' (e.g. {'b': 2})" in text


# -- gathering rows ----------------------------------------------------------------------------------
def test_take_and_keys_at_match_fancy_indexing(tmp_path):
    rng = np.random.default_rng(3)
    parts = [unit_rows(rng, n, 6) for n in (5, 0, 9, 1, 7)]
    _write(tmp_path, parts)
    store = EmbeddingStore(tmp_path)
    emb, keys = store.read_all()
    n = len(keys)
    for rows in (rng.integers(0, n, 40), np.arange(n)[::-1], np.array([6, 6, 0, n - 1, 14, 6]), np.zeros(0, np.int64),
                 [13, 5]):
        got = store.take(rows)
        assert got.dtype == np.float32 and got.shape == (len(rows), 6)
        np.testing.assert_array_equal(got, emb[np.asarray(rows, np.int64)])
        assert store.keys_at(rows).tolist() == keys[np.asarray(rows, np.int64)].tolist()
    np.testing.assert_array_equal(store.take([3, 2], dtype=np.float16), emb[[3, 2]].astype(np.float16))
    for bad in ([n], [-1]):
        with pytest.raises(IndexError):
            store.take(bad)
        with pytest.raises(IndexError):
            store.keys_at(bad)


def test_readers_refuse_non_unit_rows_naming_the_part_row(tmp_path):
    rng = np.random.default_rng(4)
    _write(tmp_path, [unit_rows(rng, 4, 6), unit_rows(rng, 5, 6)])
    path = tmp_path / "img_emb" / "img_emb_1.npy"
    emb = np.load(path)
    emb[3] *= 2
    emb[4] = np.nan
    np.save(path, emb)
    store = EmbeddingStore(tmp_path)
    assert store.take([0, 1, 5]).shape == (3, 6)  # only the rows asked for are checked
    with pytest.raises(InputError, match=r"img_emb_1.npy: row 3 has norm 2.0"):
        store.take([0, 7, 1])
    with pytest.raises(InputError, match=r"img_emb_1.npy: row 4 has NaN/inf"):
        store.take([8])
    assert store.take([7], check_unit=False).shape == (1, 6)
    with pytest.raises(InputError, match=r"img_emb_1.npy: row 3 has norm 2.0"):
        list(store.iter_chunks(2))
    assert sum(len(c) for c in store.iter_chunks(2, check=False)) == 9


# -- missing captions: zero text rows recorded as missing_text ---------------------------------------
def _store_with_marker_rows(path, recorded):
    rng = np.random.default_rng(5)
    img, txt = unit_rows(rng, 5, 8), unit_rows(rng, 5, 8)
    txt[[1, 3]] = 0
    keys = [f"k{j}" for j in range(5)]
    meta = pa.table({"image_path": keys, "caption": ["c0", None, "c2", None, "c4"]})
    st.write_part(path, 0, 1, image=img, text=txt, metadata=meta, record={"text": True, "missing_text": recorded})


def test_validate_accepts_zero_text_rows_only_for_recorded_keys(tmp_path):
    _store_with_marker_rows(tmp_path / "ok", ["k1", "k3"])
    assert store_validate(tmp_path / "ok") == []
    _store_with_marker_rows(tmp_path / "one", ["k1"])
    text = _problems(tmp_path / "one")
    assert "part 0 (text_emb_0.npy): 1 rows not unit-norm" in text and "first rows [3]" in text
    _store_with_marker_rows(tmp_path / "wrong", ["k1", "k2", "k3"])
    text = _problems(tmp_path / "wrong")
    assert "1 keys recorded as missing text have a text row other than the all-zero marker (e.g. ['k2'])" in text
    assert "not unit-norm" not in text
