"""The package layout: imports point down the pipeline and form no cycles (every import counts,
including those inside functions)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: package -> layer: a module may import only from its own layer or lower ones
#: the report reads the artifacts of every layer below and the demo (an experiment) ends with it:
#: the two share a layer
LAYERS = {
    "utils": 0, "_compat": 0, "data": 1, "models": 2, "embeddings": 3, "similarity": 4, "subsets": 5,
    "domains": 6, "train": 7, "evaluation": 7, "analysis": 8, "experiments": 9, "report": 9, "cli": 10, "__main__": 11,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "oodlab").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The oodlab modules ``path`` imports (``from pkg import sub`` counts ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("oodlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oodlab"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return {m for m in found if m in modules}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_imports_point_down_the_pipeline():
    bad = []
    for module, imported in _graph().items():
        own = _layer(module)
        if own is None:
            continue
        for other in imported:
            theirs = _layer(other)
            if theirs is not None and theirs > own:
                bad.append(f"{module} -> {other}")
    assert not bad, bad


def test_no_import_cycles():
    graph = _graph()
    # package __init__ modules re-export their submodules: an edge package -> its own submodule
    # is how Python loads it, not a dependency of the submodule on its parent
    edges = {m: {o for o in imported if not o.startswith(m + ".")} for m, imported in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, cycles


def test_the_layer_table_names_every_package():
    packages = {m.split(".")[1] for m in _modules() if "." in m}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_stages_do_not_import_each_other():
    """A stage builds on others' artifacts, not their code: only the experiments compose stages
    (the store checks and the printed training commands are libraries the stages use, not stages)."""
    from oodlab.cli.commands import COMMANDS

    stages = {c.target.split(":")[0] for c in COMMANDS if not c.name.startswith("store ") and c.name != "train-commands"}
    bad = [f"{m} -> {o}" for m, imported in _graph().items() if not m.startswith(("oodlab.experiments", "oodlab.cli"))
           for o in imported & stages - {m} if not o.startswith(m + ".")]  # a package re-exports its modules
    assert not bad, bad
