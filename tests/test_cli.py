"""The CLI's contract: one vocabulary (the glossary), options passed through to the function they
name, CLI defaults equal to the function's, and clear exit codes."""

import functools
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from oodlab.cli import app, short_help
from oodlab.cli.build import build_command, option_specs, parse_docstring
from oodlab.cli.commands import COMMANDS
from oodlab.cli.glossary import GLOSSARY
from tests.helpers import unit_rows, write_clip_retrieval_folder

REPO = Path(__file__).resolve().parents[1]
NAMES = [c.name for c in COMMANDS]


def _target(cmd):
    module, func = cmd.target.split(":")
    return getattr(importlib.import_module(module), func)


def _by_name(name):
    return next(c for c in COMMANDS if c.name == name)


def test_every_command_calls_the_function_of_its_name():
    for cmd in COMMANDS:
        assert cmd.target.split(":")[1] == cmd.name.replace(" ", "_").replace("-", "_"), cmd.name
        assert callable(_target(cmd))
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_options_are_the_keywords_in_the_glossary(name):
    cmd = _by_name(name)
    func = _target(cmd)
    built = build_command(cmd.name, cmd.target, cmd.show)
    keywords = list(inspect.signature(func).parameters)
    flags = [p.opts[0] for p in built.params]
    assert flags == [GLOSSARY[k][0] for k in keywords], name  # every keyword, in order, by its glossary flag
    _, docs = parse_docstring(func.__doc__)
    assert set(keywords) <= set(docs), f"{name}: undocumented keywords {set(keywords) - set(docs)}"


def _sample(spec, i):
    """A value for every option, distinct per option, and what the function must receive."""
    if spec.scalar is bool:
        return [spec.flag] if not spec.default else [f"--no-{spec.flag[2:]}"], not spec.default
    raw = {int: lambda j: str(7 + j), float: lambda j: f"0.{25 + j}"}.get(spec.scalar, lambda j: f"/x/{spec.keyword}-{j}")
    convert = {int: int, float: float, Path: Path}.get(spec.scalar, str)
    if spec.repeat == "pairs":
        return [spec.flag, f"a=/p/{i}a", spec.flag, f"b=/p/{i}b"], {"a": f"/p/{i}a", "b": f"/p/{i}b"}
    if spec.repeat == "list":
        return [spec.flag, raw(i), spec.flag, raw(i + 100)], [convert(raw(i)), convert(raw(i + 100))]
    return [spec.flag, raw(i)], convert(raw(i))


def _capture(monkeypatch, func):
    captured = {}

    @functools.wraps(func)
    def fake(**kwargs):
        captured.update(kwargs)
        return None

    monkeypatch.setattr("oodlab.cli.build.load_target", lambda target: fake)
    return captured


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_passed_through(name, monkeypatch):
    cmd = _by_name(name)
    func = _target(cmd)
    specs = option_specs(func)
    captured = _capture(monkeypatch, func)
    args, expected = [], {}
    for i, spec in enumerate(specs):
        a, value = _sample(spec, i)
        args += a
        expected[spec.keyword] = value
    result = CliRunner().invoke(build_command(cmd.name, cmd.target, None), args)
    assert result.exit_code == 0, result.output
    assert captured == expected


@pytest.mark.parametrize("name", NAMES)
def test_cli_defaults_are_the_function_defaults(name, monkeypatch):
    """Options not given are not passed, so the function's own defaults apply; the defaults the
    help shows are the function's."""
    cmd = _by_name(name)
    func = _target(cmd)
    signature = inspect.signature(func)
    captured = _capture(monkeypatch, func)
    specs = option_specs(func)
    args, expected = [], {}
    for i, spec in enumerate(specs):
        if spec.required:
            a, expected[spec.keyword] = _sample(spec, i)
            args += a
    built = build_command(cmd.name, cmd.target, None)
    result = CliRunner().invoke(built, args)
    assert result.exit_code == 0, result.output
    assert captured == expected
    for option in built.params:
        default = signature.parameters[option.name].default
        if option.show_default:
            assert option.default == default, f"{name} {option.opts[0]}"


def _defaults():
    """keyword -> {command: default} over every command (required keywords left out)."""
    out = {}
    for cmd in COMMANDS:
        for k, p in inspect.signature(_target(cmd)).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out.setdefault(k, {})[cmd.name] = p.default
    return out


def test_one_default_per_keyword_across_commands():
    """None means "derived" (from the model, the data or another argument) and may stand beside
    one fixed default; two fixed defaults for one keyword are not allowed."""
    for keyword, defaults in _defaults().items():
        fixed = {repr(v) for v in defaults.values() if v is not None}
        assert len(fixed) <= 1, f"{keyword}: {defaults}"


def _base(tp):
    """The scalar an annotation holds, through Optional, Sequence and Mapping."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    if origin in (typing.Union, __import__("types").UnionType):
        if len(args) == 1:  # Optional[X]: None means "derived", the type is X's
            return _base(args[0])
        return tuple(sorted(_base(a).__name__ if isinstance(_base(a), type) else str(_base(a)) for a in args))
    return _base(args[-1])


def test_one_type_per_keyword_across_commands():
    types = {}
    for cmd in COMMANDS:
        hints = typing.get_type_hints(_target(cmd))
        for k in inspect.signature(_target(cmd)).parameters:
            types.setdefault(k, {})[cmd.name] = _base(hints[k])
    for keyword, per in types.items():
        assert len({repr(v) for v in per.values()}) == 1, f"{keyword}: {per}"


def test_glossary_is_used_and_written_in_the_conventions():
    used = {k for cmd in COMMANDS for k in inspect.signature(_target(cmd)).parameters}
    assert used == set(GLOSSARY), f"unused: {set(GLOSSARY) - used}; missing: {used - set(GLOSSARY)}"
    text = (REPO / "docs" / "conventions.md").read_text()
    rows = dict(re.findall(r"^\| `(--[a-z-]+)` \| `([a-z_]+)` \|", text, flags=re.M))
    assert rows == {flag: keyword for keyword, (flag, _) in GLOSSARY.items()}
    flags = [flag for flag, _ in GLOSSARY.values()]
    assert len(set(flags)) == len(flags)


def test_help_lists_every_command_with_its_function_summary():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        first = cmd.name.split()[0]
        assert re.search(rf"^  {re.escape(first)}\b", result.output, flags=re.M), first
        summary = inspect.getdoc(_target(cmd)).split("\n\n")[0].replace("\n", " ")
        assert short_help(cmd.target) == summary  # read from source without importing = the real docstring
    for group in {c.name.split()[0] for c in COMMANDS if " " in c.name}:
        sub = CliRunner().invoke(app, [group, "--help"])
        assert sub.exit_code == 0 and all(c.name.split()[1] in sub.output for c in COMMANDS if c.name.startswith(group + " "))


@pytest.mark.parametrize("name", NAMES)
def test_command_help_shows_every_option(name):
    result = CliRunner().invoke(app, name.split() + ["--help"])
    assert result.exit_code == 0, result.output
    for spec in option_specs(_target(_by_name(name))):
        assert spec.flag in result.output, f"{name}: {spec.flag}"


def _cli(*args):
    env = dict(os.environ, OODLAB_QUIET="1")
    return subprocess.run([sys.executable, "-m", "oodlab", *args], capture_output=True, text=True, cwd=REPO, env=env)


def test_store_commands_exit_codes(tmp_path):
    rng = np.random.default_rng(0)
    write_clip_retrieval_folder(tmp_path / "s", [unit_rows(rng, 3, 8)], [["a", "b", "c"]])
    ok = _cli("store", "validate", "--store", str(tmp_path / "s"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    info = json.loads(_cli("store", "info", "--store", str(tmp_path / "s")).stdout)
    assert info["count"] == 3 and info["dim"] == 8
    emb = np.load(tmp_path / "s" / "img_emb" / "img_emb_00.npy")
    emb[1] = np.nan
    np.save(tmp_path / "s" / "img_emb" / "img_emb_00.npy", emb)
    bad = _cli("store", "validate", "--store", str(tmp_path / "s"))
    assert bad.returncode == 1 and "part 00 (img_emb_00.npy): 1 rows with NaN/inf" in bad.stderr


def test_bad_input_is_a_message_not_a_traceback(tmp_path):
    result = _cli("store", "info", "--store", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "is not an embedding store" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,says", [
    (["neighbors", "--out", "x"], "Missing option"),
    (["neighbors", "--k", "abc"], "is not a valid integer"),
    (["no-such-command"], "No such command"),
    (["neighbors", "--eval-store", "nameless", "--train-store", "t", "--out", "o"], "is not NAME=VALUE"),
])
def test_usage_errors_exit_2_with_the_usage(args, says):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Usage:" in result.stderr and "Traceback" not in result.stderr


def _documented_commands(text):
    """``(command, flags)`` of every ``oodlab ...`` command line quoted in ``text``; ``a\\|b``
    alternatives (table cells) give one command per alternative word."""
    out = []
    for quoted in re.findall(r"`(oodlab [^`]+)`", text):
        words = quoted.replace("\\|", "|").split()[1:]
        names = [""]
        for word in words:
            if word.startswith(("-", "[")) or word.isupper() or word == "...":
                break
            names = [f"{n} {alt}".strip() for n in names for alt in word.split("|")]
        flags = {f.split("=")[0] for w in words for f in re.split(r"[|\[\]]", w) if f.startswith("--")}
        out += [(name, flags) for name in names]
    return out


@pytest.mark.parametrize("document", ["README.md", "docs/conventions.md", "docs/performance.md"])
def test_documented_commands_exist_with_their_options(document):
    """Every quoted ``oodlab`` command line of the docs names a command, and each of its flags is an
    option of that command (the README's commands run as written)."""
    found = _documented_commands((REPO / document).read_text())
    assert found or document != "README.md"
    from oodlab.cli.commands import GROUPS

    for name, flags in found:
        if name in GROUPS and not flags:  # a group of commands named as a whole
            continue
        assert name in NAMES, f"{document}: `oodlab {name}` is not a command"
        options = {spec.flag for spec in option_specs(_target(_by_name(name)))} | {"--help"}
        assert flags <= options, f"{document}: `oodlab {name}` has no {sorted(flags - options)}"
