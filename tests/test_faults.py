"""Fault tests: bad input through every command that reads it, misuse of outputs, kill -9,
concurrent runs, read-only and full outputs (docs/reliability.md says what each promises).

The table (:data:`CASES`) runs the real CLI entry point (``oodlab.cli.main``) in this process on
a damaged copy of small sound inputs and asserts, for each case: the exit code (2: a usage or
input error; 1: ``store validate`` found problems), a message naming what is wrong and the fix,
no exception escaping (no traceback), nothing outside the output folder touched and nothing
already written lost. The expectations are the damage each case made, not the code's output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oodlab.embeddings import store as st
from oodlab.data.shard_writer import make_key
from tests.helpers import tree_bytes, unit_rows, write_shards

REPO = Path(__file__).resolve().parents[1]
DIM = 16


# -- sound inputs --------------------------------------------------------------------------------
def _store(path: Path, sizes: list[int], prefix: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    records = []
    for i, n in enumerate(sizes):
        keys = [f"{prefix}{i}_{j}" for j in range(n)]
        st.write_part(path, i, len(sizes), image=unit_rows(rng, n, DIM), metadata=pa.table({"image_path": keys}),
                      record={"source": "test"})
        records.append(st.read_part_record(path, i, len(sizes)))
    st.write_sidecar(path, model=None, records=records)


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> Path:
    """train (3 parts x 20 rows), ev (8 rows), a finished neighbours folder nb, shards pool
    (2 x 4 samples) and a key list keys.parquet of 3 pool keys."""
    from oodlab.similarity.neighbors import neighbors

    root = tmp_path_factory.mktemp("sound")
    _store(root / "train", [20, 20, 20], "t", 0)
    _store(root / "ev", [8], "e", 1)
    neighbors(root / "train", {"ev": root / "ev"}, root / "nb", k=3)
    write_shards(root / "pool", 2, 4)
    keys = [f"{s:05d}{i:04d}" for s, i in ((0, 0), (0, 2), (1, 1))]
    pq.write_table(pa.table({"key": keys}), root / "keys.parquet")
    return root


# -- damage ---------------------------------------------------------------------------------------
def _rewrite_npy(path: Path, change: Callable[[np.ndarray], None]) -> None:
    a = np.load(path)
    change(a)
    np.save(path, a)


def _rewrite_keys(path: Path, change: Callable[[list], None], column: str = "image_path") -> None:
    t = pq.read_table(path)
    keys = t.column(column).to_pylist()
    change(keys)
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, pa.array(keys)), path)


def _set(a: np.ndarray, row: int, value) -> None:
    a[row] = value


STORE_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (damage applied to a copy of the train store, what the message must say)
    "short-metadata": (lambda s: pq.write_table(pq.read_table(s / "metadata/metadata_1.parquet").slice(0, 18),
                                                s / "metadata/metadata_1.parquet"),
                       r"metadata_1.parquet has 18 rows, img_emb has 20"),
    "non-unit-row": (lambda s: _rewrite_npy(s / "img_emb/img_emb_1.npy", lambda a: _set(a, 3, a[3] * 2)),
                     r"img_emb_1.npy: (train )?row 3 has norm (1.99|2.00)"),
    "zero-row": (lambda s: _rewrite_npy(s / "img_emb/img_emb_0.npy", lambda a: _set(a, 5, 0)),
                 r"img_emb_0.npy: (train )?row 5 has norm 0.0"),
    "nan-row": (lambda s: _rewrite_npy(s / "img_emb/img_emb_2.npy", lambda a: _set(a, 7, np.nan)),
                r"img_emb_2.npy: (train )?row 7 has NaN/inf"),
    "duplicate-keys": (lambda s: _rewrite_keys(s / "metadata/metadata_2.parquet", lambda k: _set(k, 4, "t0_1")),
                       r"(1 keys occur more than once|has duplicate keys).*t0_1"),
    "parts-listed-but-gone": (lambda s: [(s / f).unlink() for f in ("img_emb/img_emb_1.npy", "metadata/metadata_1.parquet",
                                                                     "stats/part_1.json")],
                              r"part 1: img_emb_1.npy is missing \(the part has an entry in oodlab.json\)"),
    "unfinished-embed": (lambda s: [(s / "oodlab.json").unlink(), (s / "img_emb/img_emb_2.npy").unlink(),
                                    (s / "metadata/metadata_2.parquet").unlink(), (s / "stats/part_2.json").unlink(),
                                    (s / "run.json").write_text(json.dumps({"stage": "embed"}))],
                         r"the `oodlab embed` run writing this store has not finished"),
    "corrupt-sidecar": (lambda s: (s / "oodlab.json").write_text("{not json"), r"oodlab.json is not a readable sidecar"),
    "corrupt-metadata": (lambda s: (s / "metadata/metadata_0.parquet").write_bytes(b"garbage"),
                         r"metadata_0.parquet is not a readable parquet file"),
    "corrupt-npy": (lambda s: (s / "img_emb/img_emb_0.npy").write_bytes(b"\x93NUMPY garbage"),
                    r"img_emb_0.npy.*is not a readable .npy array"),
    "no-key-column": (lambda s: pq.write_table(pa.table({"path": [f"x{j}" for j in range(20)]}),
                                               s / "metadata/metadata_0.parquet"),
                      r"metadata_0.parquet has no key column 'image_path'"),
    "other-dim": (lambda s: np.save(s / "img_emb/img_emb_1.npy",
                                    unit_rows(np.random.default_rng(2), 20, DIM + 1).astype(np.float16)),
                  r"(dimensions \[16, 17\]|dim 17)"),
    "not-a-store": (lambda s: shutil.rmtree(s / "img_emb"), r"is not an embedding store"),
}

#: commands reading a store S (the damaged copy); validate reports instead of refusing (exit 1)
STORE_READERS: dict[str, tuple[str, int]] = {
    "neighbors-train": ("neighbors --train-store {D} --eval-store ev={root}/ev --out {O}", 2),
    "neighbors-eval": ("neighbors --train-store {root}/train --eval-store ev={D} --out {O}", 2),
    "neighbors-reference": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --reference-store ref={D} --out {O}", 2),
    "dedup": ("dedup --store {D} --out {O} --eps 0.1", 2),
    "index-build": ("index build --store {D} --out {O} --factory Flat --recall-queries 4", 2),
    "prune-random": ("prune random --store {D} --out {O} --keep 5", 2),
    "store-info": ("store info --store {D}", 2),
    "store-validate": ("store validate --store {D}", 1),
}
#: damage a reader does not rely on: a reference store is read for its nearest rows only; store
#: info and prune random read keys and counts, not rows (validate reports those, VALIDATE_SAYS)
NOT_READ = {("neighbors-reference", "duplicate-keys"), ("store-validate", "not-a-store")}
NOT_READ |= {(r, d) for r in ("store-info", "prune-random") for d in ("non-unit-row", "zero-row", "nan-row", "other-dim")}
NOT_READ |= {("store-info", "duplicate-keys")}
#: what ``store validate`` lists where its wording is a report, not a refusal
VALIDATE_SAYS = {"non-unit-row": r"part 1 \(img_emb_1.npy\): 1 rows not unit-norm .*first rows \[3\]",
                 "zero-row": r"part 0 \(img_emb_0.npy\): 1 rows not unit-norm .*first rows \[5\]",
                 "nan-row": r"part 2 \(img_emb_2.npy\): 1 rows with NaN/inf \(first rows \[7\]\)",
                 "duplicate-keys": r"1 duplicate keys .*'t0_1': 2",
                 "other-dim": r"part 1 \(img_emb_1.npy\): dim 17 differs"}


NEIGHBORS_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "unfinished": (lambda n: (n / "manifest.json").unlink(), r"manifest|not finished|unfinished"),
    "part-gone": (lambda n: (n / "train/part_1.parquet").unlink(), r"holds 2 per-training-part tables, its manifest counts 3"),
    "corrupt-part": (lambda n: (n / "train/part_0.parquet").write_bytes(b"garbage"), r"part_0.parquet.*(readable|parquet)"),
    "duplicate-keys": (lambda n: _rewrite_keys(n / "train/part_2.parquet", lambda k: _set(k, 0, "t0_0"), "key"),
                       r"more than once.*t0_0"),
}
NEIGHBORS_READERS = {
    "prune-near": "prune near --neighbors {D} --out {O} --keep 5",
    "prune-far": "prune far --neighbors {D} --out {O} --keep 5",
    "prune-random": "prune random --neighbors {D} --out {O} --keep 5",
    "similarity-report": "similarity report --neighbors {D} --out {O}",
}
NOT_READ |= {("similarity-report", d) for d in ("duplicate-keys", "part-gone", "corrupt-part")}  # reads eval tables
#: a NUL in a key only matters where keys are held as bytes (subset); a keep-from set just matches nothing
NOT_READ |= {("prune-near-keep-from", "nul-in-key"), ("dedup-keep-from", "nul-in-key")}


def _tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


SHARD_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "escaping-member": (lambda p: _tar_with(p / "00001.tar", [("../evil.jpg", b"x"), ("../evil.txt", b"y")]),
                        r"00001.tar.*(escap|outside|\.\./evil)"),
    "absolute-member": (lambda p: _tar_with(p / "00001.tar", [("/tmp/evil.jpg", b"x")]), r"00001.tar.*(absolute|/tmp/evil)"),
}
#: damage that embed reports and skips (a shard img2dataset could not finish), subset refuses
SUBSET_ONLY = {
    "not-a-tar": (lambda p: (p / "00001.tar").write_bytes(b"definitely not a tar" * 40), r"00001.tar"),
    "gzip-tar": (lambda p: (p / "00001.tar").write_bytes(b"\x1f\x8b\x08" + b"\x00" * 600), r"00001.tar.*(compress|gzip)"),
}
SHARD_READERS = {
    "embed": "embed --data {D} --out {O} --workers 0",
    "subset": "subset --keys {root}/keys.parquet --data {D} --out {O} --workers 0",
    # the refusal is raised in a worker process and must arrive as the same message
    "embed-in-a-worker": "embed --data {D} --out {O} --workers 2",
    "subset-in-a-worker": "subset --keys {root}/keys.parquet --data {D} --out {O} --workers 2",
}

KEYLIST_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda k: k.unlink(), r"keys.parquet.*(not found|does not exist|missing)"),
    "no-key-column": (lambda k: pq.write_table(pa.table({"id": ["a"]}), k), r"keys.parquet.*'key' column"),
    "corrupt": (lambda k: k.write_bytes(b"garbage"), r"keys.parquet.*(readable|parquet)"),
    "nul-in-key": (lambda k: pq.write_table(pa.table({"key": ["000000000", "000000002\x00"]}), k),
                   r"keys.parquet.*(NUL|\\x00|\\\\x00)"),
}
KEYLIST_READERS = {
    "subset": "subset --keys {D} --data {root}/pool --out {O} --workers 0",
    "prune-near-keep-from": "prune near --neighbors {root}/nb --out {O} --keep 1 --keep-from {D}",
    "dedup-keep-from": "dedup --store {root}/train --out {O} --eps 0.1 --keep-from {D}",
}

ARGUMENTS: dict[str, tuple[str, str]] = {
    # misuse of arguments and outputs: (command, what the message must say)
    "negative-k": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {O} --k -1", r"k must be >= 0"),
    "zero-chunk-rows": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {O} --chunk-rows 0", r"chunk_rows"),
    "validate-zero-chunk-rows": ("store validate --store {root}/train --chunk-rows 0", r"chunk_rows must be >= 1"),
    "eval-name-escapes": ("neighbors --train-store {root}/train --eval-store ../victim/kept={root}/ev --out {O}",
                          r"'../victim/kept' is not a plain file name"),
    "eval-name-absolute": ("neighbors --train-store {root}/train --eval-store {root}/abs={root}/ev --out {O}",
                           r"is not a plain file name"),
    "eval-name-twice": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --eval-store ev={root}/ev --out {O}",
                        r"twice"),
    "two-references": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --reference-store a={root}/train "
                       "--reference-store b={root}/train --out {O}", r"2 reference stores given"),
    "embed-batch-size-0": ("embed --data {root}/pool --out {O} --batch-size 0", r"batch_size=0 is below its least value 1"),
    "embed-batch-size-negative": ("embed --data {root}/pool --out {O} --batch-size -3", r"batch_size=-3 is below its least value 1"),
    "embed-workers-negative": ("embed --data {root}/pool --out {O} --workers -1", r"workers=-1 is below its least value 0"),
    "embed-precision-fp8": ("embed --data {root}/pool --out {O} --precision fp8", r"unknown precision 'fp8'"),
    "evaluate-precision-fp8": ("evaluate --checkpoint {root}/nb --eval-data imagenet-val={root}/pool --out {O} --precision fp8",
                               r"unknown precision 'fp8'"),
    "train-precision-fp8": ("train-commands --train-data {root}/pool --out {O} --precision fp8", r"unknown precision 'fp8'"),
    "embed-device-cuda": ("embed --data {root}/pool --out {O} --device cuda", r"device 'cuda' requested but this torch"),
    "evaluate-device-cuda": ("evaluate --checkpoint {root}/nb --eval-data imagenet-val={root}/pool --out {O} --device cuda:0",
                             r"device 'cuda:0' requested but this torch"),
    "train-device-cuda": ("train --train-data {root}/pool --out {O} --device cuda", r"device 'cuda' requested but this torch"),
    "neighbors-device-cuda": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {O} --device cuda",
                              r"device 'cuda' requested but this torch"),
    "neighbors-device-nonsense": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {O} --device gpu0",
                                  r"unknown device 'gpu0'"),
    "train-commands-device-nonsense": ("train-commands --train-data {root}/pool --out {O} --device tpu",
                                       r"unknown device 'tpu'"),
    "out-is-the-train-store": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {root}/train --overwrite",
                               r"is, contains or lies inside the input"),
    "out-inside-the-pool": ("subset --keys {root}/keys.parquet --data {root}/pool --out {root}/pool/sub --overwrite",
                            r"is, contains or lies inside the input"),
    "out-is-the-data": ("embed --data {root}/pool --out {root}/pool --overwrite", r"is, contains or lies inside the input"),
    "out-contains-an-input": ("prune near --neighbors {root}/nb --out {root} --keep 5 --overwrite",
                              r"is, contains or lies inside the input"),
    "prune-into-neighbors": ("prune near --neighbors {root}/nb --out {root}/nb --keep 5", r"lies inside the input"),
    "out-is-a-file": ("neighbors --train-store {root}/train --eval-store ev={root}/ev --out {root}/keys.parquet",
                      r"keys.parquet.*(is a file|holds files)"),
    "out-is-foreign": ("prune near --neighbors {root}/nb --out {root}/pool --keep 5", r"lies inside the input|no prune near run wrote"),
}


@dataclass(frozen=True)
class Case:
    id: str
    argv: str
    code: int
    says: str
    damage: Callable[[Path], None] | None = None  # applied to the copy of the sound inputs


def _on_copy(src: str, dst: str, damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Copy the sound input ``root/src`` (a folder or a file) to ``root/dst`` and damage the copy."""
    def apply(root: Path) -> None:
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (root / src).is_dir() else shutil.copy)(root / src, root / dst)
        damage(root / dst)
    return apply


def _cases() -> list[Case]:
    # (family, damage table, its readers: argv or (argv, exit code), the sound input, its damaged copy)
    families = [
        ("store", STORE_DAMAGE, STORE_READERS, "train", "bad"),
        ("neighbors", NEIGHBORS_DAMAGE, NEIGHBORS_READERS, "nb", "badnb"),
        ("shards", SHARD_DAMAGE, SHARD_READERS, "pool", "badpool"),
        ("shards", SUBSET_ONLY, {"subset": SHARD_READERS["subset"]}, "pool", "badpool"),
        ("keys", KEYLIST_DAMAGE, KEYLIST_READERS, "keys.parquet", "badkeys/keys.parquet"),
    ]
    out: list[Case] = []
    for family, damages, readers, src, dst in families:
        for d, (damage, says) in damages.items():
            for r, reader in readers.items():
                if (r, d) in NOT_READ:
                    continue
                argv, code = reader if isinstance(reader, tuple) else (reader, 2)
                says_here = VALIDATE_SAYS.get(d, says) if r == "store-validate" else says
                out.append(Case(f"{family}:{d}:{r}", argv.replace("{D}", f"{{root}}/{dst}"), code, says_here,
                                _on_copy(src, dst, damage)))
    for name, (argv, says) in ARGUMENTS.items():
        out.append(Case(f"args:{name}", argv, 2, says))
    return out


CASES = _cases()


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capfd) -> tuple[int, str]:
    """The CLI entry point in this process: (exit code, stdout + stderr). An exception other than
    SystemExit (a traceback for the user) fails the test with that exception."""
    from oodlab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capfd.readouterr()
    return int(exit_.value.code or 0), captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_a_message_and_nothing_is_lost(case, sound, tmp_path, capfd, monkeypatch):
    if "--device cuda" in case.argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("the case is a CPU-only build asked for a GPU")
    monkeypatch.setenv("OODLAB_QUIET", "1")
    monkeypatch.setenv("COLUMNS", "400")  # one message per line: the patterns below do not cross wrapping
    root = tmp_path / "in"
    shutil.copytree(sound, root)
    if case.damage is not None:
        case.damage(root)
    out = root / "out"
    before = _snapshot(root)
    code, text = run_cli(case.argv.format(root=root, O=out).split(), capfd)
    flat = " ".join(text.split())
    import re

    assert code == case.code, flat
    assert re.search(case.says, flat), flat
    assert ("Fix:" in flat or "Usage:" in flat) if case.code == 2 else True, flat
    after = _snapshot(root)
    lost = {p for p in before if after.get(p) != before[p]}
    assert not lost, f"changed or deleted: {sorted(lost)[:5]}"
    outside = {p for p in after if p not in before and not p.startswith("out/")}
    assert not outside, f"written outside OUT: {sorted(outside)[:5]}"


def test_the_table_covers_every_command_that_reads_stores_neighbors_shards_and_key_lists():
    """How many cases the table holds (quoted in docs/reliability.md), and that every command
    with a store / neighbours / shards / key-list option is in it."""
    from oodlab.cli.commands import COMMANDS

    tested = {c.argv.split(" --")[0] for c in CASES}
    readers = {"neighbors", "dedup", "index build", "prune near", "prune far", "prune random", "store info",
               "store validate", "similarity report", "embed", "subset"}
    assert readers <= tested, readers - tested
    assert readers <= {c.name for c in COMMANDS}
    assert len(CASES) >= 120


# -- re-runs: resume only on the same inputs ---------------------------------------------------------
def test_a_rerun_on_inputs_changed_in_place_is_refused_not_mixed(sound, tmp_path):
    """The issue's reproduction: stores re-embedded in place with another model after a run of
    neighbors; a re-run used to resume and mix old and new scores."""
    from oodlab.similarity.neighbors import neighbors
    from oodlab.utils.errors import IncompatibleError

    root = tmp_path / "in"
    shutil.copytree(sound, root)
    first = json.loads((root / "nb" / "manifest.json").read_text())
    (root / "nb" / "manifest.json").unlink()  # as if killed before the end
    # the same keys and sidecar, other embeddings (another model), rewritten in place
    _rewrite_npy(root / "train/img_emb/img_emb_0.npy", lambda a: a.__setitem__(slice(None), a[::-1]))
    with pytest.raises(IncompatibleError, match=r"inputs\.train_store\.sha256"):
        neighbors(root / "train", {"ev": root / "ev"}, root / "nb", k=3)
    assert not (root / "nb" / "manifest.json").exists()
    again = neighbors(root / "train", {"ev": root / "ev"}, root / "nb", k=3, overwrite=True)
    assert again["inputs"]["train_store"]["sha256"] != first["inputs"]["train_store"]["sha256"]


def test_a_resumed_run_writes_the_manifest_of_a_clean_run(sound, tmp_path):
    """Byte-identical re-runs: a neighbours run killed after a part and resumed writes the same
    files as one clean run (no ``resumed_parts`` in its manifest)."""
    from oodlab.similarity.neighbors import neighbors

    clean = tree_bytes(sound / "nb")
    out = tmp_path / "nb"
    neighbors(sound / "train", {"ev": sound / "ev"}, out, k=3)
    (out / "manifest.json").unlink()
    (out / "train" / "part_2.parquet").unlink()
    (out / "eval" / "ev.parquet").unlink()
    neighbors(sound / "train", {"ev": sound / "ev"}, out, k=3)
    resumed = tree_bytes(out)
    assert resumed.keys() == clean.keys()
    assert {k for k in clean if resumed[k] != clean[k]} <= {"run.json", "manifest.json"}
    strip = lambda m: {k: v for k, v in json.loads(m).items() if k != "inputs"}  # noqa: E731  (paths differ)
    assert strip(resumed["manifest.json"]) == strip(clean["manifest.json"])


def test_k_is_capped_at_the_training_set_size(sound, tmp_path):
    from oodlab.similarity.neighbors import neighbors

    manifest = neighbors(sound / "train", {"ev": sound / "ev"}, tmp_path / "nb", k=100_000_000)
    table = pq.read_table(tmp_path / "nb" / "eval" / "ev.parquet")
    assert manifest["counts"]["k"] == 60 and table.num_rows == 8 * 60


# -- kill -9 at every phase ---------------------------------------------------------------------------
def _popen(code: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OODLAB_QUIET="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


KILL_STAGES = {
    # stage: (python call writing OUT, its phases: the files whose appearance marks each)
    "neighbors": ("from oodlab.similarity.neighbors import neighbors as f; "
                  "f('{root}/big', {{'ev': '{root}/ev'}}, '{out}', k=3, chunk_rows=64)",
                  ["run.json", "train/part_0.parquet", "train/part_3.parquet", "eval/ev.parquet"]),
    "dedup": ("from oodlab.subsets.dedup import dedup as f; f('{root}/big', '{out}', eps=0.3, chunk_rows=64)",
              ["run.json", "centroids.npy", "kept.parquet"]),
    "prune": ("from oodlab.subsets.prune import prune_near as f; f('{root}/bignb', '{out}', keep=100)",
              ["run.json", "kept.parquet"]),
    "subset": ("from oodlab.subsets.reshard import subset as f; "
               "f('{root}/bigkeys.parquet', ['{root}/bigpool'], '{out}', per_shard=30, workers=0)",
               ["run.json", "00000.tar", "00003.tar", "written.parquet"]),
    "embed": ("from oodlab.embeddings.embed import embed as f; f(['{root}/bigpool'], '{out}', workers=0, batch_size=16)",
              ["run.json", "img_emb/img_emb_0.npy", "img_emb/img_emb_3.npy", "oodlab.json"]),
}


@pytest.fixture(scope="module")
def big(sound, tmp_path_factory) -> Path:
    """The sound inputs plus a larger train store (6 parts x 400 rows) and its neighbours, and a
    larger pool (6 shards x 60 samples) with a key list of half its samples."""
    from oodlab.similarity.neighbors import neighbors

    root = tmp_path_factory.mktemp("big")
    for name in ("ev", "pool", "keys.parquet"):
        (shutil.copytree if (sound / name).is_dir() else shutil.copy)(sound / name, root / name)
    _store(root / "big", [400] * 6, "b", 3)
    neighbors(root / "big", {"ev": root / "ev"}, root / "bignb", k=3)
    write_shards(root / "bigpool", 6, 60)
    pq.write_table(pa.table({"key": [make_key(s, i) for s in range(6) for i in range(0, 60, 2)]}), root / "bigkeys.parquet")
    return root


@pytest.mark.parametrize("stage", list(KILL_STAGES))
def test_kill_9_at_every_phase_resumes_to_the_bytes_of_a_clean_run(stage, big, tmp_path):
    """SIGKILL as soon as each phase's first file appears (and once at start-up), then re-run:
    the output is byte-identical to an uninterrupted run's, and no temporary is left."""
    call, phases = KILL_STAGES[stage]
    clean = tmp_path / "clean"
    proc = _popen(call.format(root=big, out=clean), tmp_path)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    expected = tree_bytes(clean)
    for marker in [None, *phases]:
        out = tmp_path / f"killed-{(marker or 'start').replace('/', '_')}"
        proc = _popen(call.format(root=big, out=out), tmp_path)
        deadline = time.time() + 120
        while marker is not None and not (out / marker).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = _popen(call.format(root=big, out=out), tmp_path)
        assert again.wait(timeout=300) == 0, again.stderr.read().decode()
        # a file that names its own folder (openclip.json's --train-data) names the clean run's there
        got = {k: v.replace(str(out).encode(), str(clean).encode()) for k, v in tree_bytes(out).items()}
        assert got.keys() == expected.keys(), (marker, sorted(set(got) ^ set(expected)))
        differ = {k for k in got if got[k] != expected[k] and k not in ("run.json", "manifest.json")}
        assert not differ, (marker, sorted(differ))
        strip = lambda m: {k: v for k, v in json.loads(m).items() if k != "inputs"}  # noqa: E731
        if "manifest.json" in got:
            assert strip(got["manifest.json"]) == strip(expected["manifest.json"]), marker


# -- concurrent runs ----------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_output_is_refused_and_the_first_is_unharmed(big, tmp_path):
    """A live run holds OUT (here a process that opened its run folder and waits); dedup into
    the same OUT is refused naming the owner, and removes nothing of the first run's (its run
    record and a temporary it is writing, which the old start-up clean-up deleted)."""
    from oodlab.utils.atomic import TMP_MARK

    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from oodlab.utils.runs import RunFolder; "
         f"RunFolder({str(out)!r}, 'dedup', inputs={{}}, parameters={{}}).open(); "
         f"open({str(out / ('.work' + TMP_MARK + '1-x'))!r}, 'w').write('live'); print('held', flush=True); time.sleep(120)"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_bytes(out)
        call, _ = KILL_STAGES["dedup"]
        second = _popen(call.format(root=big, out=out), tmp_path)
        assert second.wait(timeout=300) != 0
        message = " ".join(second.stderr.read().decode().split())
        assert "is being written by another run" in message and f'"pid": {holder.pid}' in message, message
        assert tree_bytes(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_stale_and_taken_over(big, tmp_path):
    from oodlab.utils.runs import LOCK

    call, _ = KILL_STAGES["dedup"]
    out = tmp_path / "o"
    proc = _popen(call.format(root=big, out=out), tmp_path)
    while not (out / "run.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == proc.pid  # left behind, with its owner
    assert _popen(call.format(root=big, out=out), tmp_path).wait(timeout=300) == 0
    assert not (out / LOCK).exists() and (out / "manifest.json").exists()


# -- read-only and full outputs -----------------------------------------------------------------------
def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                           "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs `unshare -rm` (user and mount namespaces)")

WRITERS = {
    "neighbors": "neighbors --train-store {root}/big --eval-store ev={root}/ev --out {out}",
    "dedup": "dedup --store {root}/big --out {out} --eps 0.3",
    "prune": "prune near --neighbors {root}/bignb --out {out} --keep 100",
    "subset": "subset --keys {root}/keys.parquet --data {root}/pool --out {out} --workers 0",
    "embed": "embed --data {root}/pool --out {out} --workers 0",
    "index": "index build --store {root}/big --out {out} --factory Flat --recall-queries 4",
    "report": "similarity report --neighbors {root}/bignb --out {out}",
    "synth": "synth --out {out} --preset tiny --workers 0",
}


def _in_namespace(setup: str, argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OODLAB_QUIET="1", PYTHONPATH=str(REPO), COLUMNS="400")
    cmd = f"{setup} && exec {sys.executable} -m oodlab {argv}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@needs_mount
@pytest.mark.parametrize("stage", list(WRITERS))
def test_a_read_only_output_is_a_message_before_any_work(stage, big, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "kept.txt").write_text("earlier results")
    result = _in_namespace(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} {ro}",
                           WRITERS[stage].format(root=big, out=ro / "out"), tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and f"{ro}: cannot be written" in " ".join(result.stderr.split())
    assert (ro / "kept.txt").read_text() == "earlier results"


def _complete(path: Path) -> None:
    """Read a file under its final name completely (raises if it is cut)."""
    if path.suffix == ".parquet":
        pq.read_table(path)
    elif path.suffix == ".npy":
        np.load(path, allow_pickle=False)
    elif path.suffix == ".tar":
        with tarfile.open(path) as tf:
            for member in tf:
                tf.extractfile(member).read()
    elif path.suffix == ".json":
        json.loads(path.read_text())


@needs_mount
@pytest.mark.parametrize("stage, size", [("neighbors", "24k"), ("embed", "24k"), ("dedup", "24k"), ("dedup", "96k")])
def test_a_full_disk_is_a_message_naming_the_file_and_a_rerun_resumes(stage, size, big, tmp_path):
    """A small file system fills mid-run: exit 2 naming the file and the cause; every file under
    a final name is complete; the same command, once there is room, finishes with the files of a
    clean run. (96 KiB: dedup's work arrays fill it, which killed the run with SIGBUS when they
    were sparse memmaps.)"""
    full, keep = tmp_path / "full", tmp_path / "keep"
    full.mkdir()
    argv = WRITERS[stage].format(root=big, out=full / "out")
    py = f"{sys.executable} -m oodlab {argv}"
    script = (f"mount -t tmpfs -o size={size} tmpfs {full} && {{ {py} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc; "
              f"mkdir -p {keep}/failed {keep}/rerun && cp -a {full}/. {keep}/failed/ && "
              f"mount -o remount,size=64m {full} && {py} 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc; "
              f"cp -a {full}/. {keep}/rerun/; }}")
    env = dict(os.environ, OODLAB_QUIET="1", PYTHONPATH=str(REPO), COLUMNS="400")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, env=env, timeout=600, check=True)
    message = " ".join((tmp_path / "first.err").read_text().split())
    assert (tmp_path / "first.rc").read_text().strip() == "2" and "Traceback" not in message, message
    assert "could not be written" in message and "full" in message and "Fix:" in message, message
    for f in (keep / "failed").rglob("*"):
        if f.is_file() and "oodlab-tmp" not in f.name:
            _complete(f)
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    clean = tmp_path / "clean" / "out"
    assert subprocess.run([sys.executable, "-m", "oodlab", *WRITERS[stage].format(root=big, out=clean).split()],
                          env=env, cwd=tmp_path, capture_output=True).returncode == 0
    got, want = tree_bytes(keep / "rerun" / "out"), tree_bytes(clean)
    assert got.keys() == want.keys()
    assert {k for k in want if got[k] != want[k]} <= {"run.json", "manifest.json", "oodlab.json"}
