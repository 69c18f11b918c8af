"""kernels/ imports: no cycle among its modules (module-level and function-level imports alike), nothing from
the rest of sparseformer, and no torch.distributed (collectives are callables passed in)."""

import ast
import os

KERNELS = os.path.join(os.path.dirname(__file__), "..", "..", "kernels")
PKG = "sparseformer.kernels"
COMPILED = {f"{PKG}._C"}          # the CUDA extension: a module without Python source


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every .py under kernels/ (a package's name is its __init__)."""
    out = dict.fromkeys(COMPILED, "")
    for root, _, files in os.walk(KERNELS):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), KERNELS)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([PKG] + rel)] = os.path.join(root, f)
    return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """Every module `name` imports, at any depth of its code; submodules named in `from X import y` count."""
    is_pkg = path.endswith("__init__.py")
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in modules else mod)
    return found


def _graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) if p else set() for m, p in modules.items()}


def test_no_import_cycle_in_kernels():
    modules, graph = _graph()
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_kernels_import_nothing_else_of_sparseformer_nor_torch_distributed():
    _, graph = _graph()
    for m, deps in graph.items():
        bad = [d for d in deps if (d.startswith("sparseformer") and not d.startswith(PKG))
               or d.startswith("torch.distributed")]
        assert not bad, f"{m} imports {bad}"
