import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from oodlab.cli import app
from oodlab.cli._app import TARGETS
from tests.helpers import unit_rows, write_clip_retrieval_folder

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _commands():
    click_app = typer.main.get_command(app)
    out = {}
    for name, cmd in click_app.commands.items():
        if hasattr(cmd, "commands"):
            out.update({f"{name} {sub}": c for sub, c in cmd.commands.items()})
        else:
            out[name] = cmd
    return out


def test_every_command_has_a_target():
    assert set(_commands()) == set(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_option_is_a_keyword_of_the_target(name):
    module, func = TARGETS[name].split(":")
    target = getattr(importlib.import_module(module), func)
    accepted = set(inspect.signature(target).parameters)
    params = {p.name for p in _commands()[name].params if p.name != "help"}
    assert params <= accepted, f"{name}: CLI options without a matching keyword: {params - accepted}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_help_reads(name):
    result = runner.invoke(app, name.split() + ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def _cli(*args):
    env = dict(os.environ, OODLAB_QUIET="1")
    return subprocess.run([sys.executable, "-m", "oodlab", *args], capture_output=True, text=True, cwd=REPO, env=env)


def test_store_commands_exit_codes(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path / "s", [unit_rows(rng, 3, 8)], [["a", "b", "c"]])
    ok = _cli("store", "validate", str(tmp_path / "s"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    info = json.loads(_cli("store", "info", str(tmp_path / "s")).stdout)
    assert info["count"] == 3 and info["dim"] == 8
    emb = np.load(tmp_path / "s" / "img_emb" / "img_emb_00.npy")
    emb[1] = np.nan
    np.save(tmp_path / "s" / "img_emb" / "img_emb_00.npy", emb)
    bad = _cli("store", "validate", str(tmp_path / "s"))
    assert bad.returncode == 1 and "part 00 (img_emb_00.npy): 1 rows with NaN/inf" in bad.stderr


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    result = _cli("store", "info", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not an embedding store" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr
