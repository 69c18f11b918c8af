"""Task objects and the registry: the 20 built-in tasks, user generators, and JSONL files.

A task is a source of `Pair`s: two Python prompts that differ only in what the task is about, each with
its own correct next text (docs/tasks.md). A generator task draws pairs from `generator(rng)`; a file task
holds a fixed list. `register_task` adds a generator; `get_task`/`resolve_tasks` look tasks up.
"""

from __future__ import annotations

import difflib
import importlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..errors import TaskError
from .jsonl import load_jsonl_task
from .task import Pair, Task

_BUILTIN_MODULES = ("gen_strings", "gen_structure", "gen_control")
BUILTIN_TASKS = (  # the order of the paper's Table 1
    "single_double_quote", "final_kwarg", "set_or_string", "set_or_string_fixedvarname", "class_init",
    "with_as", "bracket_brace", "with_open", "bracket_counting", "for_while", "else_elif", "fstring_brace",
    "if_ternary", "var_swap", "indent_for", "lambda_func", "if_equals", "enumerate_range", "var_if",
    "while_return_true",
)
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


_REGISTRY: dict[str, Task] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{mod}")


def _check_name(name: str) -> None:
    if not name or not _NAME_RE.fullmatch(name) or name.endswith(".jsonl") or name == "all":
        raise TaskError(f"bad task name {name!r}: use letters, digits, '_', '-', '.'; not 'all', not '*.jsonl'")


def register_task(name: str, *, description: str = "", kind: str = "binary", replace: bool = False,
                  source: str = "user") -> Callable[[Callable[[random.Random], Pair]], Callable]:
    """Decorator: register `fn(rng: random.Random) -> Pair` as the generator of task `name`.

    The generator must draw all its randomness from `rng` (determinism) and should vary the surface of
    its prompts. A name that is already registered is an error unless replace=True.
    """
    _check_name(name)

    def deco(fn: Callable[[random.Random], Pair]) -> Callable[[random.Random], Pair]:
        if name in _REGISTRY and not replace:
            raise TaskError(f"task '{name}' is already registered; pick another name or pass replace=True")
        _REGISTRY[name] = Task(name=name, description=description or (fn.__doc__ or "").strip().split("\n")[0],
                               generator=fn, kind=kind, source=source)
        return fn

    return deco


def _builtin(name: str, description: str, kind: str = "binary"):
    """register_task for the built-in generators (source='builtin')."""
    return register_task(name, description=description, kind=kind, source="builtin")


def unregister_task(name: str) -> None:
    """Remove a registered task (mainly for tests and notebooks)."""
    _REGISTRY.pop(name, None)


def list_tasks() -> list[Task]:
    """All registered tasks: the built-ins in the paper's order, then user tasks in registration order."""
    _load_builtins()
    order = {name: i for i, name in enumerate(BUILTIN_TASKS)}
    tasks = list(_REGISTRY.values())  # dicts keep registration order, so user tasks stay in theirs
    return sorted(tasks, key=lambda t: order.get(t.name, len(order)) if t.source == "builtin" else len(order))


def get_task(name: str) -> Task:
    """The registered task `name`; an unknown name raises TaskError with close matches."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise TaskError(f"unknown task {name!r}; {hint}`sparseformer tasks list` shows the {len(_REGISTRY)} tasks "
                    f"(a custom task file must end in .jsonl)")


def resolve_tasks(spec: str | Task | Iterable[str | Task] | None) -> list[Task]:
    """Turn a user's selection into tasks.

    Accepts None or "all" (every registered task), a Task, a name, a path ending in .jsonl (loaded as a
    file task named after the file), a comma-separated string of these, or an iterable of them.
    """
    if spec is None:
        return list_tasks()
    if isinstance(spec, Task):
        return [spec]
    if isinstance(spec, str):
        items: Sequence = [s.strip() for s in spec.split(",") if s.strip()]
        if not items:
            raise TaskError("no task given; name one or more tasks, 'all', or a FILE.jsonl")
    else:
        items = list(spec)
    out: list[Task] = []
    for item in items:
        if isinstance(item, Task):
            out.append(item)
        elif item == "all":
            out.extend(list_tasks())
        elif str(item).endswith(".jsonl"):
            out.append(load_jsonl_task(Path(item)))
        else:
            out.append(get_task(str(item)))
    seen: set[str] = set()
    unique = []
    for t in out:
        if t.name not in seen:
            seen.add(t.name)
            unique.append(t)
    return unique


def resolve_task(spec: str | Task) -> Task:
    """Exactly one task (a name, a Task or a .jsonl path); TaskError when `spec` names none or several."""
    tasks = resolve_tasks(spec)
    if len(tasks) != 1:
        raise TaskError(f"give one task at a time; {spec!r} names {len(tasks)}")
    return tasks[0]
