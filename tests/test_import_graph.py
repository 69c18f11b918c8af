"""The package's import graph: no cycles, and dependencies only in the documented direction.

Layers (docs/architecture.md, "Dependencies"): cli -> pipeline/sweep/bridges -> train/prune/official/report ->
checkpoint/runfiles/distributed -> model/sparsity/layers/tasks/data -> kernels; kernels/ imports nothing else
from sparseformer; tasks/ and data/ know nothing of kernels. Every import
statement counts, at module level or inside a function, since a function-level import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"sparseformer": ROOT / "sparseformer", "sparseformer.kernels": ROOT / "kernels"}

# group -> the groups it may import (itself always allowed), the layers of docs/architecture.md. A group is the
# first component below sparseformer ("prune" for sparseformer.prune.search, "model" for sparseformer.model);
# kernels is one group.
BASE = {"errors", "faults", "determinism", "sites"}          # leaves: they import at most errors
ALLOWED = {
    "kernels": set(),
    "errors": set(),
    "faults": set(),
    "determinism": {"errors"},
    "sites": {"errors"},
    "hooks": {"errors"},
    "config": {"errors", "sites"},
    "data": BASE | {"config"},
    "tasks": BASE | {"config", "data"},
    "layers": {"errors", "kernels"},
    "sparsity": BASE | {"config", "kernels", "layers"},
    "model": BASE | {"config", "hooks", "layers", "kernels"},
}
LIBRARY = set(ALLOWED)
ALLOWED.update({
    "distributed": LIBRARY,
    "runfiles": BASE | {"config", "data"},
    "checkpoint": LIBRARY | {"runfiles"},
})
STORAGE = LIBRARY | {"distributed", "runfiles", "checkpoint"}
ALLOWED.update({
    "train": STORAGE | {"official"},
    "prune": STORAGE | {"report"},
    "official": STORAGE,
    "report": STORAGE,
})
JOBS = STORAGE | {"train", "prune", "official", "report"}
ALLOWED.update({
    "bridges": JOBS,
    "pipeline": JOBS,
    "sweep": JOBS | {"pipeline"},
})
ALLOWED["cli"] = set(ALLOWED) - {"cli"}
ALLOWED["__main__"] = {"cli"}
ALLOWED["__init__"] = set(ALLOWED) - {"cli", "__main__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, base in PACKAGE_DIRS.items():
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` depends on the submodule only; `from pkg import name` on pkg itself
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _group(module: str) -> str:
    if module == "sparseformer":
        return "__init__"
    if module.startswith("sparseformer.kernels"):
        return "kernels"
    return module.split(".")[1]


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


def test_every_group_is_declared():
    assert len(MODULES) > 50 and "sparseformer.kernels" in MODULES and "sparseformer.cli" in MODULES
    assert {_group(m) for m in MODULES} <= set(ALLOWED), sorted({_group(m) for m in MODULES} - set(ALLOWED))


def test_imports_follow_the_dependency_direction():
    bad = sorted(f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts
                 if _group(t) != _group(m) and _group(t) not in ALLOWED.get(_group(m), set())
                 and t != "sparseformer")
    assert not bad, "imports against the dependency direction:\n" + "\n".join(bad)


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
