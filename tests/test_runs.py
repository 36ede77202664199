"""Run folders, names, atomic writes and the resolution of image data: the shared mechanisms."""

import json
import os
import subprocess
import sys

import pytest

from oodlab.data.sources import resolve_data
from oodlab.utils.atomic import TMP_MARK, PendingPath, atomic_open, write_json
from oodlab.utils.errors import IncompatibleError, InputError
from oodlab.utils.names import check_name, check_names
from oodlab.utils.runs import RunFolder, fingerprint
from tests.helpers import write_image_folder, write_shards


def _stage(out, *, k=1, workers=1, reads=(), overwrite=False, log=None):
    """A two-task stage: writes a.txt and b.txt (skipping what exists), then its manifest."""
    run = RunFolder(out, "toy", inputs={"source": "x"}, parameters={"k": k}, settings={"workers": workers}, reads=reads)
    done = run.open(overwrite)
    if done is not None:
        return done
    for name in ("a", "b"):
        if not (run.out / f"{name}.txt").exists():
            write_json(run.out / f"{name}.txt", k)
            if log is not None:
                log.append(name)
    return run.finish(counts={"tasks": 2})


def test_identical_rerun_does_nothing_and_other_parameters_are_refused(tmp_path):
    log = []
    first = _stage(tmp_path / "o", log=log)
    assert log == ["a", "b"] and json.loads((tmp_path / "o" / "manifest.json").read_text()) == first
    assert _stage(tmp_path / "o", log=log, workers=2) == first and log == ["a", "b"]  # settings are not compared
    with pytest.raises(IncompatibleError, match=r"parameters\.k \(1 before, 2 now\)"):
        _stage(tmp_path / "o", k=2)
    again = _stage(tmp_path / "o", k=2, overwrite=True, log=log)
    assert again["parameters"] == {"k": 2} and log == ["a", "b", "a", "b"]


def test_an_unfinished_run_resumes_its_missing_tasks(tmp_path):
    log = []
    _stage(tmp_path / "o")
    (tmp_path / "o" / "manifest.json").unlink()  # as if killed before the end
    (tmp_path / "o" / "b.txt").unlink()
    (tmp_path / "o" / f".b.txt{TMP_MARK}123-abc").write_text("half")  # a killed write
    _stage(tmp_path / "o", log=log)
    assert log == ["b"] and not list((tmp_path / "o").glob(f"*{TMP_MARK}*"))


def test_foreign_folders_and_inputs_are_never_written(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(IncompatibleError, match="no toy run wrote"):
        _stage(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.tar").write_bytes(b"")
    for out in (tmp_path / "data", tmp_path / "data" / "sub", tmp_path):
        with pytest.raises(InputError, match="input"):
            _stage(out, reads=[tmp_path / "data"], overwrite=True)
    assert (tmp_path / "data" / "x.tar").exists() and (tmp_path / "mine" / "notes.txt").exists()


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "k.txt").write_text("a\nb\n")
    a = fingerprint(tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text("a\nc\n")
    assert fingerprint(tmp_path / "k.txt") != a
    import hashlib

    assert fingerprint(tmp_path / "k.txt")["sha256"] == hashlib.sha256(b"a\nc\n").hexdigest()


@pytest.mark.parametrize("name", ["val", "imagenet-r", "v2.clean", "a_1"])
def test_plain_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "../x", "a/b", "/abs", ".hidden", "-x", "a b", "x\\y"])
def test_names_that_would_leave_their_folder_are_refused(name):
    with pytest.raises(InputError, match="not a plain file name"):
        check_name(name, "eval set")


def test_a_name_given_twice_is_refused():
    with pytest.raises(InputError, match="given twice"):
        check_names(["val", "r", "val"], "eval set")


def test_a_killed_writer_leaves_no_file_under_the_final_name(tmp_path):
    code = (f"from oodlab.utils.atomic import atomic_open\nimport os\n"
            f"with atomic_open({str(tmp_path / 'f.bin')!r}) as f:\n    f.write(b'x' * 100)\n    f.flush()\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert not (tmp_path / "f.bin").exists() and len(os.listdir(tmp_path)) == 1  # only the temporary
    with pytest.raises(ZeroDivisionError):
        with atomic_open(tmp_path / "g.bin") as f:
            f.write(b"y")
            1 / 0
    assert not (tmp_path / "g.bin").exists()
    with PendingPath(tmp_path / "h.bin") as pending:
        pending.tmp.write_bytes(b"z")
    assert (tmp_path / "h.bin").read_bytes() == b"z"


# -- image data ----------------------------------------------------------------------------------
def test_data_resolves_in_order_by_kind(tmp_path):
    write_shards(tmp_path / "pool", 3, 2)
    write_image_folder(tmp_path / "folder", {"a": 2})
    (tmp_path / "list.txt").write_text("folder/a/a_000.jpg\n")
    got = resolve_data([str(tmp_path / "pool" / "{00001..00002}.tar"), tmp_path / "folder", tmp_path / "list.txt",
                        str(tmp_path / "pool" / "00000.tar")])
    assert [(s.kind, s.path.name) for s in got] == [("shards", "00001.tar"), ("shards", "00002.tar"), ("folder", "folder"),
                                                     ("files", "list.txt"), ("shards", "00000.tar")]
    assert [s.path.name for s in resolve_data(tmp_path / "pool")] == ["00000.tar", "00001.tar", "00002.tar"]


def test_data_given_twice_ambiguous_or_of_the_wrong_kind_is_refused(tmp_path):
    write_shards(tmp_path / "pool", 2, 2)
    with pytest.raises(InputError, match="given twice"):
        resolve_data([tmp_path / "pool", tmp_path / "pool" / "00001.tar"])
    write_image_folder(tmp_path / "pool", {"cls": 1})  # class folders beside the tars
    with pytest.raises(InputError, match="both .tar shards and class folders"):
        resolve_data(tmp_path / "pool")
    write_image_folder(tmp_path / "folder", {"a": 1})
    with pytest.raises(InputError, match="is an ImageFolder root, but this stage reads webdataset shards"):
        resolve_data(tmp_path / "folder", kinds=("shards",))
    with pytest.raises(InputError, match="matches no file"):
        resolve_data(str(tmp_path / "nowhere" / "{0..3}.tar"))
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(InputError, match="neither"):
        resolve_data(tmp_path / "notes.csv")
