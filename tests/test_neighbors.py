"""The neighbours pass against an independent float64 brute force on the stored embeddings."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oodlab.embeddings import store as st
from oodlab.similarity.engine import EvalSet, StreamingNeighbors
from oodlab.similarity.neighbors import neighbors
from oodlab.utils.errors import IncompatibleError, InputError
from tests.helpers import kill_9_midway, tree_bytes, unit_rows, write_clip_retrieval_folder

REPO = Path(__file__).resolve().parents[1]


def _store(path: Path, parts: list[np.ndarray], prefix: str, model: dict | None = None, dtype=np.float16) -> list[str]:
    keys = []
    for i, emb in enumerate(parts):
        k = [f"{prefix}{i}_{j}" for j in range(len(emb))]
        keys += k
        st.write_part(path, i, len(parts), image=emb, metadata=pa.table({"image_path": k}), record={"source": "test"})
        if dtype == np.float32:  # rewrite the part in float32 (write_part stores float16)
            suffix = st.part_suffix(i, len(parts))
            np.save(path / "img_emb" / f"img_emb_{suffix}.npy", st.normalize_rows(emb).astype(np.float32))
    records = [st.read_part_record(path, i, len(parts)) for i in range(len(parts))]
    st.write_sidecar(path, model=model, records=records)
    return keys


def _stored(path: Path) -> np.ndarray:
    return st.EmbeddingStore(path).read_all()[0].astype(np.float64)


def _brute(E: np.ndarray, T: np.ndarray, k: int):
    S = E @ T.T  # float64: exact for float16 inputs
    order = np.lexsort((np.broadcast_to(np.arange(T.shape[0]), S.shape), -S), axis=1)[:, :k]
    return S, order


@pytest.fixture
def neighbor_stores(tmp_path):
    """Train store with ties, an empty part, a tiny part; two eval sets; a reference set."""
    rng = np.random.default_rng(7)
    d = 24
    parts = [unit_rows(rng, n, d) for n in (300, 0, 3, 257, 190)]
    parts[3][10] = parts[0][5]  # exact duplicate rows: tied scores across parts
    parts[4][0] = parts[0][5]
    near = unit_rows(rng, 40, d)
    parts[4][1:41] = near + 0.05 * unit_rows(rng, 40, d)  # near-duplicates of eval rows
    parts[4][1:41] /= np.linalg.norm(parts[4][1:41], axis=1, keepdims=True)
    train_keys = _store(tmp_path / "train", parts, "t")
    ev_a = unit_rows(rng, 333, d)  # larger than the chunk
    ev_a[:40] = near
    ev_a[50] = parts[0][5]  # an eval row identical to tied train rows
    _store(tmp_path / "a", [ev_a[:200], ev_a[200:]], "a")
    _store(tmp_path / "b", [unit_rows(rng, 17, d)], "b")
    _store(tmp_path / "ref", [unit_rows(rng, 120, d), unit_rows(rng, 80, d)], "r")
    return tmp_path, np.array(train_keys)


def _read_eval(out, name):
    return pq.read_table(out / "eval" / f"{name}.parquet").to_pandas()


def _read_train(out):
    return pd_concat([pq.read_table(p).to_pandas() for p in sorted((out / "train").glob("part_*.parquet"))])


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("screen,chunk_rows", [("bf16", 64), ("bf16", 4096), ("fp32", 100), ("auto", 64)])
def test_outputs_equal_brute_force(neighbor_stores, screen, chunk_rows):
    root, train_keys = neighbor_stores
    out = root / f"out-{screen}-{chunk_rows}"
    k = 20  # larger than the 3-row part
    neighbors(root / "train", {"a": root / "a", "b": root / "b"}, out, k=k, reference_stores={"inet": root / "ref"},
              chunk_rows=chunk_rows, screen=screen)
    T, R = _stored(root / "train"), _stored(root / "ref")
    train_table = _read_train(out)
    assert train_table["key"].tolist() == train_keys.tolist()
    for name in ("a", "b"):
        E = _stored(root / name)
        ekeys = np.array([f"{name}{i}_{j}" for i, n in enumerate([200, 133] if name == "a" else [17]) for j in range(n)])
        S, order = _brute(E, T, k)
        got = _read_eval(out, name)
        assert got["query_key"].tolist() == np.repeat(ekeys, k).tolist()
        assert got["rank"].tolist() == np.tile(np.arange(k), len(E)).tolist()
        assert got["train_key"].tolist() == train_keys[order].ravel().tolist()  # sets, order and tie-breaks
        np.testing.assert_allclose(got["score"], np.take_along_axis(S, order, 1).ravel(), atol=1e-6)
        # per training sample: max similarity and the eval sample attaining it (ties -> first)
        np.testing.assert_allclose(train_table[f"max_sim__{name}"], S.max(0), atol=1e-6)
        assert train_table[f"argmax__{name}"].tolist() == ekeys[S.argmax(0)].tolist()
        # thresholds = nearest-neighbour similarity to the reference set
        t = (E @ R.T).max(1)
        thr = pq.read_table(out / "thresholds" / f"{name}.parquet").to_pandas()
        np.testing.assert_allclose(thr["threshold"], t, atol=1e-12)
        M = S - t[:, None]
        np.testing.assert_allclose(train_table[f"margin__{name}"], M.max(0), atol=1e-9)
        assert ((train_table[f"margin__{name}"] > 0) == (M > 0).any(0)).all()
        assert train_table[f"margin_argmax__{name}"].tolist() == ekeys[M.argmax(0)].tolist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train_rows"] == len(T) and not (out / "state").exists()


def test_k_larger_than_the_training_set(tmp_path):
    rng = np.random.default_rng(0)
    _store(tmp_path / "train", [unit_rows(rng, 4, 8), unit_rows(rng, 3, 8)], "t")
    _store(tmp_path / "e", [unit_rows(rng, 5, 8)], "e")
    neighbors(tmp_path / "train", {"e": tmp_path / "e"}, tmp_path / "out", k=10)
    got = _read_eval(tmp_path / "out", "e")
    S, order = _brute(_stored(tmp_path / "e"), _stored(tmp_path / "train"), 7)
    assert len(got) == 5 * 7
    assert got["train_row"].tolist() == order.ravel().tolist()


def test_float32_stores_and_threshold_files(tmp_path):
    rng = np.random.default_rng(1)
    _store(tmp_path / "train", [unit_rows(rng, 150, 12), unit_rows(rng, 90, 12)], "t", dtype=np.float32)
    _store(tmp_path / "e", [unit_rows(rng, 30, 12)], "e")
    E, T = _stored(tmp_path / "e"), _stored(tmp_path / "train")
    assert st.EmbeddingStore(tmp_path / "train").dtype == "float32"
    t = np.sort(rng.uniform(0.2, 0.6, 30))[::-1].copy()  # thresholds in reverse order: the engine sorts them
    pq.write_table(pa.table({"key": [f"e0_{j}" for j in range(30)][::-1], "threshold": t[::-1]}), tmp_path / "t.parquet")
    neighbors(tmp_path / "train", {"e": tmp_path / "e"}, tmp_path / "out", k=3, threshold_files={"e": tmp_path / "t.parquet"})
    train_table = _read_train(tmp_path / "out")
    M = E @ T.T - t[:, None]
    np.testing.assert_allclose(train_table["margin__e"], M.max(0), atol=1e-9)
    assert train_table["margin_argmax__e"].tolist() == [f"e0_{j}" for j in M.argmax(0)]


@pytest.mark.parametrize("screen,backend", [("bf16", "numba"), ("bf16", "torch"), ("fp32", "numba"), ("fp32", "torch")])
def test_engine_backends_with_many_sets_and_tiny_chunks_match_numpy(screen, backend):
    rng = np.random.default_rng(3)
    T = unit_rows(rng, 500, 32).astype(np.float16)
    T[400] = T[7]  # a tie across chunks
    sets = [unit_rows(rng, n, 32).astype(np.float16).astype(np.float32) for n in (1, 64, 65, 130)]
    ts = [rng.uniform(0.2, 0.6, len(e)) for e in sets]
    engine = StreamingNeighbors([EvalSet(f"s{i}", e, np.arange(len(e)), ts[i] if i % 2 else None) for i, e in enumerate(sets)],
                                k=5, screen=screen, backend=backend)
    assert engine.backend == backend
    results = [engine.process(T[s : s + 37], s) for s in range(0, len(T), 37)]
    top = engine.topk_result()
    for i, e in enumerate(sets):
        S, order = _brute(e.astype(np.float64), T.astype(np.float64), 5)
        assert (top[f"s{i}"][0] == order).all()
        np.testing.assert_allclose(top[f"s{i}"][1], np.take_along_axis(S, order, 1), atol=1e-12)
        assert (np.concatenate([r.argmax[f"s{i}"] for r in results]) == S.argmax(0)).all()
        np.testing.assert_allclose(np.concatenate([r.max_sim[f"s{i}"] for r in results]), S.max(0), atol=1e-12)
        if i % 2:
            M = S - ts[i][:, None]
            assert (np.concatenate([r.margin_argmax[f"s{i}"] for r in results]) == M.argmax(0)).all()
            np.testing.assert_allclose(np.concatenate([r.margin[f"s{i}"] for r in results]), M.max(0), atol=1e-12)


def test_mismatched_dims_and_models_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    _store(tmp_path / "train", [unit_rows(rng, 10, 8)], "t", model={"architecture": "A", "weights": {"sha256": "1"}, "preprocess": {}})
    _store(tmp_path / "e16", [unit_rows(rng, 5, 16)], "e", model={"architecture": "A", "weights": {"sha256": "1"}, "preprocess": {}})
    _store(tmp_path / "other", [unit_rows(rng, 5, 8)], "e", model={"architecture": "B", "weights": {"sha256": "2"}, "preprocess": {}})
    with pytest.raises(IncompatibleError, match="has dim 16 but train"):
        neighbors(tmp_path / "train", {"e": tmp_path / "e16"}, tmp_path / "out")
    with pytest.raises(IncompatibleError, match="embedded with B .* but train with A"):
        neighbors(tmp_path / "train", {"e": tmp_path / "other"}, tmp_path / "out")


def test_nan_and_unnormalised_rows_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path / "train", [unit_rows(rng, 10, 8), unit_rows(rng, 10, 8)], [list("abcdefghij"), list("klmnopqrst")])
    write_clip_retrieval_folder(tmp_path / "e", [unit_rows(rng, 4, 8)], [list("wxyz")])
    emb = np.load(tmp_path / "train" / "img_emb" / "img_emb_01.npy")
    emb[3] = np.nan
    np.save(tmp_path / "train" / "img_emb" / "img_emb_01.npy", emb)
    with pytest.raises(InputError, match=r"img_emb_01.npy: train row 3 has NaN/inf"):
        neighbors(tmp_path / "train", {"e": tmp_path / "e"}, tmp_path / "out")
    emb = np.load(tmp_path / "e" / "img_emb" / "img_emb_00.npy")
    emb[2] *= 2
    np.save(tmp_path / "e" / "img_emb" / "img_emb_00.npy", emb)
    with pytest.raises(InputError, match=r"row 2 has norm 2.0"):
        neighbors(tmp_path / "train", {"e": tmp_path / "e"}, tmp_path / "out2")


@pytest.mark.slow
def test_kill_9_then_resume_equals_clean_run(tmp_path):
    rng = np.random.default_rng(5)
    n_parts = 12
    _store(tmp_path / "train", [unit_rows(rng, 2000, 64) for _ in range(n_parts)], "t")
    _store(tmp_path / "e", [unit_rows(rng, 1500, 64)], "e")
    _store(tmp_path / "ref", [unit_rows(rng, 500, 64)], "r")
    args = ["--train-store", str(tmp_path / "train"), "--eval-store", f"e={tmp_path / 'e'}", "--reference-store", f"r={tmp_path / 'ref'}",
            "--k", "5", "--chunk-rows", "512"]
    cli = [sys.executable, "-m", "oodlab", "neighbors", *args, "--out"]
    out = tmp_path / "killed"
    done = kill_9_midway(cli + [str(out)], lambda: len(list((out / "train").glob("part_*.parquet"))), 3, REPO)
    assert 3 <= done < n_parts, "the kill must land mid-run"
    env = dict(os.environ, OODLAB_QUIET="1")
    subprocess.run(cli + [str(out)], cwd=REPO, env=env, check=True)
    subprocess.run(cli + [str(tmp_path / "clean")], cwd=REPO, env=env, check=True)
    killed, clean = tree_bytes(out), tree_bytes(tmp_path / "clean")
    killed.pop("manifest.json"), clean.pop("manifest.json")  # counts differ: resumed parts
    assert killed == clean


def test_resume_refuses_changed_parameters(neighbor_stores):
    root, _ = neighbor_stores
    neighbors(root / "train", {"b": root / "b"}, root / "out", k=3)
    with pytest.raises(IncompatibleError, match="other inputs or parameters"):
        neighbors(root / "train", {"b": root / "b"}, root / "out", k=4)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ONEDNN_MAX_CPU_ISA caps x86 only")
def test_auto_screen_picks_float32_where_the_bf16_gemm_is_emulated():
    # capping oneDNN at AVX2 makes its bf16 GEMM an emulation (as on CPUs without native bf16):
    # fp32 BLAS is then several times faster, and auto must notice it by timing
    code = ("import torch; from oodlab.similarity.screens import make_screen; "
            "a = torch.nn.functional.normalize(torch.randn(2000, 512), dim=1); "
            "print(make_screen('auto', a, 1024).name)")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "fp32"


def test_unknown_screen_is_refused_before_anything_is_written(neighbor_stores):
    root, _ = neighbor_stores
    with pytest.raises(InputError, match="unknown screen 'int8'.*--screen as one of auto, bf16, fp32"):
        neighbors(root / "train", {"b": root / "b"}, root / "out-int8", k=3, screen="int8")
    assert not (root / "out-int8").exists()


def test_the_screen_is_a_setting_a_resumed_run_may_change(neighbor_stores):
    root, _ = neighbor_stores
    first = neighbors(root / "train", {"b": root / "b"}, root / "out-screens", k=3, screen="fp32")
    again = neighbors(root / "train", {"b": root / "b"}, root / "out-screens", k=3, screen="bf16")
    assert again == first


def test_the_first_compile_of_the_kernels_is_announced_once(tmp_path, monkeypatch, capsys):
    from oodlab.similarity import kernels

    monkeypatch.setattr(kernels.row_maxima._cache, "_cache_path", str(tmp_path))
    monkeypatch.delenv("OODLAB_QUIET", raising=False)
    monkeypatch.setattr(kernels, "_announced", False)
    kernels.note_first_compile()
    kernels.note_first_compile()
    assert capsys.readouterr().err.count("compiling the similarity kernels") == 1
    (tmp_path / "kernels.row_maxima-118.py311.nbi").write_bytes(b"")
    monkeypatch.setattr(kernels, "_announced", False)
    kernels.note_first_compile()
    assert "compiling" not in capsys.readouterr().err
