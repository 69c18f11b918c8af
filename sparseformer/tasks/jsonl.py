"""Custom tasks from JSONL files: one pair per line.

Each non-blank line is a JSON object with string fields `prompt_a`, `target_a`, `prompt_b`, `target_b`,
and optionally `"split": "train" | "test"` (a line without it belongs to both splits). Other keys are
ignored, so files may carry ids or notes. The task is named after the file (`my_pairs.jsonl` ->
`my_pairs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..data._atomic import atomic_write_text
from ..errors import TaskError
from .task import Pair, Task

FIELDS = ("prompt_a", "target_a", "prompt_b", "target_b")
_SHAPE = "each line must be a JSON object with string fields " + ", ".join(FIELDS)


def _parse_line(text: str, where: str) -> tuple[Pair, str | None]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {_SHAPE}") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}; {_SHAPE}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise TaskError(f"{where}: missing {', '.join(missing)}; {_SHAPE}")
    bad = [f for f in FIELDS if not isinstance(obj[f], str)]
    if bad:
        raise TaskError(f"{where}: {', '.join(bad)} must be strings; {_SHAPE}")
    empty = [f for f in FIELDS if not obj[f]]
    if empty:
        raise TaskError(f"{where}: {', '.join(empty)} is empty; prompts and targets need text")
    split = obj.get("split")
    if split not in (None, "train", "test"):
        raise TaskError(f"{where}: split={split!r}; use \"train\", \"test\" or leave it out (both)")
    return Pair(*(obj[f] for f in FIELDS)), split


def load_jsonl_task(path: str | os.PathLike, *, name: str | None = None, kind: str = "binary",
                    description: str | None = None) -> Task:
    """Load a JSONL file of pairs as a Task named after the file (or `name`).

    Raises TaskError naming the file and line for a malformed line, and for a missing or empty file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist; give the path to a .jsonl file of pairs") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read task file {path}: {e}") from None
    pairs, splits = [], []
    for lineno, text in enumerate(lines, start=1):
        if text.strip():
            pair, split = _parse_line(text, f"{path}:{lineno}")
            pairs.append(pair)
            splits.append(split)
    if not pairs:
        raise TaskError(f"task file {path} has no pairs; {_SHAPE}")
    return Task(name=name or path.stem, description=description or f"pairs from {path.name}",
                pairs=tuple(pairs), splits=tuple(splits), kind=kind, source=str(path))


def write_jsonl(path: str | os.PathLike, pairs: Iterable[Pair]) -> Path:
    """Write pairs as JSONL (atomically: temp file in the same directory, then rename)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs))
    return path
