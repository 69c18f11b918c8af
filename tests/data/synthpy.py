"""Deterministic synthetic Python text for the data tests (imported by the test files)."""

import random

_NAMES = ["alpha", "beta", "count", "value", "items", "result", "total", "name", "data", "index", "node",
          "buffer", "config", "parser", "token", "width", "height", "größe", "naïve", "数据"]
_STRINGS = ["hello", "world", "x", "done", "error: %s", "ok", "naïve café", "日本語", "a\\tb", ""]


def python_snippet(rng: random.Random) -> str:
    """One small, plausible Python function using calls, quotes, brackets, numbers and unicode."""
    f, a, b, c = (rng.choice(_NAMES) for _ in range(4))
    s, q = rng.choice(_STRINGS), rng.choice(["'", '"'])
    n = rng.randint(0, 10 ** rng.randint(1, 7))
    body = rng.choice([
        f"    print({q}{s}{q})\n    return {a} + {n}\n",
        f"    {b} = [[{n}, {n % 7}], [{a}, {c}]]\n    return {b}[0]\n",
        f"    if {a} > {n}:\n        raise ValueError({q}{s}{q})\n    return {{{q}{c}{q}: {a}}}\n",
        f"    for {c} in range({n}):\n        {b}.append(str({c}))\n\n    return len({b})\n",
        f"    {b} = {a}.get({q}{s}{q}, None)\n    log({q}{s}{q}, {b})\n    return {b}\n",
    ])
    return f"def {f}_{n % 100}({a}, {b}=None):\n    \"\"\"Compute {s}.\"\"\"\n{body}\n\n"


def python_text(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        parts.append(python_snippet(rng))
        size += len(parts[-1])
    return "".join(parts)


def write_corpus(root, n_files: int = 24, file_bytes: int = 4000, seed: int = 0):
    """A directory of n_files .py files (some nested) of about file_bytes each; returns the root."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        path = root / (f"pkg{i % 3}/mod{i:02d}.py" if i % 2 else f"mod{i:02d}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(python_text(file_bytes, seed=seed * 1000 + i), encoding="utf-8")
    return root
