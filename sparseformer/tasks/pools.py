"""Shared vocabulary and code fragments for the task generators.

Everything here draws from a `random.Random` passed in, never from global state, and iterates only over
tuples (never sets), so a seed fixes the output on every machine. The fragments are syntactically valid
Python on their own; `scaffold` stitches them into realistic code before a task's key line.
"""

from __future__ import annotations

import random

NOUNS = (
    "item", "value", "name", "path", "data", "result", "count", "total", "index", "key", "node", "line",
    "word", "text", "record", "entry", "row", "column", "field", "user", "order", "price", "size", "width",
    "height", "score", "level", "state", "status", "config", "option", "message", "event", "task", "job",
    "batch", "chunk", "block", "buffer", "cache", "queue", "stack", "token", "label", "group", "folder",
    "source", "payload", "response", "request", "header", "body", "module", "packet", "frame", "image",
    "pixel", "color", "point", "vector", "matrix", "grid", "cell", "edge", "graph", "tree", "leaf",
    "parent", "child", "client", "server", "session", "account", "balance", "amount", "limit", "offset",
    "delay", "timeout", "port", "host", "address", "number", "digit", "letter", "symbol", "pattern",
    "query", "answer", "title", "author", "book", "page", "note", "city", "country", "product",
    "customer", "student", "grade", "course", "animal", "weight", "speed", "distance", "angle", "radius",
    "area", "volume", "reading", "sample", "signal", "layer", "device", "channel", "owner", "version",
)
QUALIFIERS = (
    "max", "min", "new", "old", "last", "first", "next", "prev", "raw", "clean", "default", "base",
    "local", "temp", "final", "num", "total", "best", "current", "target", "start", "end", "user", "file",
)
VERBS = (
    "get", "load", "save", "parse", "build", "compute", "process", "update", "check", "find", "read",
    "send", "handle", "create", "remove", "format", "convert", "validate", "render", "fetch", "merge",
    "sort", "filter", "count", "clean", "apply", "run", "collect", "scan", "encode", "decode", "normalize",
)
WORDS = NOUNS + (
    "the", "a", "of", "to", "is", "not", "found", "ready", "done", "failed", "loading", "starting",
    "invalid", "missing", "unknown", "saved", "skipping", "waiting", "for", "with", "from", "empty", "new",
    "hello", "world", "error", "warning", "finished", "received", "expected", "got", "bad", "too", "many",
)
MODULES = ("os", "sys", "json", "math", "re", "time", "logging", "random", "itertools", "functools",
           "collections", "pathlib", "string", "csv", "shutil", "heapq", "bisect", "datetime")
FROM_IMPORTS = (("collections", "defaultdict"), ("collections", "Counter"), ("pathlib", "Path"),
                ("typing", "List"), ("typing", "Optional"), ("dataclasses", "dataclass"),
                ("functools", "lru_cache"), ("itertools", "chain"), ("heapq", "heappush"), ("math", "sqrt"))
METHODS_NOARG = ("strip", "lower", "upper", "copy", "keys", "values", "items", "split", "pop", "clear")
LOG_CALLS = ("print", "logger.info", "logger.debug", "logging.warning", "log.info")

KEYWORDS = frozenset(("False", "None", "True", "and", "as", "assert", "async", "await", "break", "class",
                      "continue", "def", "del", "elif", "else", "except", "finally", "for", "from",
                      "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass",
                      "raise", "return", "try", "while", "with", "yield", "self"))


def glue(closing: str, tail: str) -> tuple[str, str]:
    """Split `closing + tail` into (target, completion) at the end of the pre-token that `closing` starts.

    Under the tinypython pre-tokenizer regex a punctuation run takes the punctuation and newlines that follow it
    (`")` + `\n` is one pre-token `")\n`), so the token a model sees after a prompt depends on the
    rest of the line; the target must be that whole pre-token for its first token to be the real one.
    """
    i = 0
    while i < len(tail) and not tail[i].isspace() and not tail[i].isalnum():
        i += 1
    while i < len(tail) and tail[i] in "\r\n/":
        i += 1
    return closing + tail[:i], tail[i:]


def pick(rng: random.Random, pool, avoid=()) -> str:
    """A random element of `pool` that is not in `avoid`."""
    choices = [w for w in pool if w not in avoid]
    return rng.choice(choices)


def ident(rng: random.Random, avoid=(), compound: float = 0.35) -> str:
    """A snake_case variable name: a noun, sometimes with a qualifier (`max_size`)."""
    for _ in range(50):
        if rng.random() < compound:
            name = f"{rng.choice(QUALIFIERS)}_{rng.choice(NOUNS)}"
        else:
            name = rng.choice(NOUNS)
        if name not in avoid and name not in KEYWORDS:
            return name
    return pick(rng, NOUNS, avoid)


def idents(rng: random.Random, n: int, avoid=(), compound: float = 0.35) -> list[str]:
    """n distinct names, none in `avoid`."""
    out: list[str] = []
    while len(out) < n:
        name = ident(rng, tuple(avoid) + tuple(out), compound)
        out.append(name)
    return out


def func_name(rng: random.Random, avoid=()) -> str:
    """A function name like `load_config`."""
    while True:
        name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}" if rng.random() < 0.8 else rng.choice(VERBS)
        if name not in avoid:
            return name


def class_name(rng: random.Random) -> str:
    """A CamelCase class name like `OrderCache`."""
    parts = [rng.choice(NOUNS)] if rng.random() < 0.4 else [rng.choice(NOUNS), rng.choice(NOUNS)]
    return "".join(p.capitalize() for p in parts)


def words(rng: random.Random, lo: int = 1, hi: int = 5) -> str:
    """Some words for a string literal or comment; starts and ends with a letter or digit, no quotes."""
    ws = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.2:
        ws.insert(rng.randrange(len(ws) + 1), str(rng.randint(0, 999)))
    text = " ".join(ws)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if len(ws) > 2 and rng.random() < 0.2:
        cut = rng.randrange(1, len(ws))
        text = " ".join(ws[:cut]) + rng.choice((":", ",", " -", ";")) + " " + " ".join(ws[cut:])
    return text


def int_lit(rng: random.Random, negative: bool = True) -> str:
    """An integer literal of varied magnitude."""
    r = rng.random()
    n = rng.randint(0, 9) if r < 0.45 else rng.randint(10, 99) if r < 0.8 else rng.randint(100, 99999)
    return f"-{n}" if negative and n and rng.random() < 0.1 else str(n)


def str_lit(rng: random.Random, quote: str | None = None) -> str:
    """A short string literal in either quote style."""
    q = quote or rng.choice(('"', "'"))
    return f"{q}{words(rng, 1, 3)}{q}"


def literal(rng: random.Random) -> str:
    """A literal value: int, float, string, bool/None, or a small list/tuple/dict."""
    r = rng.random()
    if r < 0.3:
        return int_lit(rng)
    if r < 0.4:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 99)}"
    if r < 0.65:
        return str_lit(rng)
    if r < 0.75:
        return rng.choice(("True", "False", "None"))
    if r < 0.85:
        return "[" + ", ".join(int_lit(rng) for _ in range(rng.randint(0, 4))) + "]"
    if r < 0.92:
        return "{}" if rng.random() < 0.5 else "[]"
    return "{" + f"{str_lit(rng)}: {int_lit(rng)}" + "}"


def alnum_end_cond(rng: random.Random, avoid=()) -> str:
    """A boolean expression that ends with a letter or digit (safe right before `:` or ` else`)."""
    a, b = idents(rng, 2, avoid)
    return rng.choice((
        f"{a} > {int_lit(rng, False)}", f"{a} is None", f"{a} is not None", f"not {a}", f"{a}",
        f"{a} in {b}", f"{a} not in {b}", f"{a} == {b}", f"{a} < {b}", f"len({a}) > {int_lit(rng, False)}",
        f"{a} >= {int_lit(rng, False)}", f"{a} and {b}", f"{a}.{b} == {int_lit(rng, False)}",
    ))


def statement(rng: random.Random, ind: str, avoid=()) -> str:
    """One to four lines of ordinary code at indentation `ind`, never using a name in `avoid`."""
    x, y, z = idents(rng, 3, avoid)
    inner = ind + "    "
    k = rng.randrange(14)
    if k == 0:
        return f"{ind}{x} = {literal(rng)}\n"
    if k == 1:
        return f"{ind}{x} = {func_name(rng, avoid)}({y})\n"
    if k == 2:
        return f"{ind}{x}.{rng.choice(('append', 'add', 'update', 'extend', 'remove'))}({y})\n"
    if k == 3:
        return f"{ind}{x} += {int_lit(rng, False)}\n"
    if k == 4:
        return f"{ind}{rng.choice(LOG_CALLS)}({str_lit(rng)})\n"
    if k == 5:  # a comment never stands alone, so a block of statements is never empty
        return f"{ind}# {words(rng, 2, 8)}\n" + statement(rng, ind, avoid)
    if k == 6:
        return f"{ind}if {x} is None:\n{inner}{x} = {literal(rng)}\n"
    if k == 7:
        return f"{ind}for {x} in {y}:\n{inner}{z} += {x}\n"
    if k == 8:
        return f"{ind}{x} = [{', '.join(literal(rng) for _ in range(rng.randint(1, 4)))}]\n"
    if k == 9:
        return f"{ind}{x} = {y}.{rng.choice(METHODS_NOARG)}()\n"
    if k == 10:
        return f"{ind}{x} = {y} {rng.choice(('+', '-', '*', '//', '%'))} {rng.choice((z, int_lit(rng, False)))}\n"
    if k == 11:
        return (f"{ind}try:\n{inner}{x} = {func_name(rng, avoid)}({y})\n"
                f"{ind}except {rng.choice(('ValueError', 'KeyError', 'OSError', 'Exception'))}:\n{inner}{x} = None\n")
    if k == 12:
        return f"{ind}{x} = {{{str_lit(rng)}: {y}, {str_lit(rng)}: {literal(rng)}}}\n"
    return f"{ind}{x}, {y} = {z}.{rng.choice(('split', 'partition'))}({str_lit(rng)})[:2]\n"


def statements(rng: random.Random, ind: str, lo: int, hi: int, avoid=()) -> str:
    """Between lo and hi statements at indentation `ind`."""
    return "".join(statement(rng, ind, avoid) for _ in range(rng.randint(lo, hi)))


def docstring(rng: random.Random, ind: str) -> str:
    return f'{ind}"""{words(rng, 2, 8).capitalize()}."""\n'


def function_def(rng: random.Random, ind: str = "", avoid=()) -> str:
    """A small complete function at indentation `ind`."""
    args = idents(rng, rng.randint(0, 3), avoid, compound=0.2)
    body = ind + "    "
    text = f"{ind}def {func_name(rng, avoid)}({', '.join(args)}):\n"
    if rng.random() < 0.5:
        text += docstring(rng, body)
    text += statements(rng, body, 1, 3, avoid)
    return text + f"{body}return {rng.choice(args) if args else literal(rng)}\n"


def top_item(rng: random.Random, avoid=()) -> str:
    """One top-level item: imports, a constant, a comment, a function or a small class."""
    k = rng.randrange(6)
    if k == 0:
        mods = sorted(rng.sample(MODULES, rng.randint(1, 3)))
        return "".join(f"import {m}\n" for m in mods)
    if k == 1:
        mod, name = rng.choice(FROM_IMPORTS)
        return f"from {mod} import {name}\n"
    if k == 2:
        return f"{ident(rng, avoid, 0.5).upper()} = {literal(rng)}\n"
    if k == 3:
        return f"# {words(rng, 3, 10)}\n"
    if k == 4:
        return function_def(rng, "", avoid)
    attr = ident(rng, avoid)
    return (f"class {class_name(rng)}:\n" + (docstring(rng, "    ") if rng.random() < 0.5 else "")
            + f"    {attr} = {literal(rng)}\n")


def preamble(rng: random.Random, avoid=(), lo: int = 0, hi: int = 3) -> str:
    """Top-level code before a task's context: imports, constants, functions, separated by blank lines."""
    text = ""
    for _ in range(rng.randint(lo, hi)):
        item = top_item(rng, avoid)
        if item.startswith(("def", "class")):  # PEP 8: two blank lines around top-level definitions
            text += ("\n\n" if text else "") + item + "\n\n"
        else:
            text += item
    return text + ("\n" if text and not text.endswith("\n\n") else "")


def scaffold(rng: random.Random, avoid=(), *, min_depth: int = 0, max_depth: int = 3,
             need_function: bool = False, body_lo: int = 0, body_hi: int = 2) -> tuple[str, str]:
    """Code that a task's key statement can follow, and the indentation for that statement.

    Returns (head, ind): `head` ends with a newline (or is empty) and `head + ind + <statement>` is valid
    Python. Contexts: module level, a function body, a method body, or a block (for/if/with/try) inside
    a function; `need_function` forces one of the latter (for `return`).
    """
    lo = max(min_depth, 1 if need_function else 0)
    depth = rng.randint(lo, max(lo, max_depth))
    head = preamble(rng, avoid)
    if depth == 0:
        return head + statements(rng, "", body_lo, body_hi, avoid), ""
    args = idents(rng, rng.randint(0, 3), avoid, compound=0.2)
    if depth >= 2 and rng.random() < 0.5:  # a method: class at 0, def at 4, body at 8
        head += f"class {class_name(rng)}:\n"
        if rng.random() < 0.4:
            head += docstring(rng, "    ")
        head += f"    def {func_name(rng, avoid)}({', '.join(['self'] + args)}):\n"
        ind = "        "
    else:
        head += f"def {func_name(rng, avoid)}({', '.join(args)}):\n"
        ind = "    "
    if rng.random() < 0.4:
        head += docstring(rng, ind)
    while len(ind) < 4 * depth:
        head += statements(rng, ind, 0, 2, avoid)
        head += block_header(rng, ind, avoid)
        ind += "    "
    return head + statements(rng, ind, body_lo, body_hi, avoid), ind


def block_header(rng: random.Random, ind: str, avoid=()) -> str:
    """A line that opens a block (`for ...:`, `if ...:`, `with ... as ...:`, `try:`, `while ...:`)."""
    x, y = idents(rng, 2, avoid)
    k = rng.randrange(5)
    if k == 0:
        return f"{ind}for {x} in {y}:\n"
    if k == 1:
        return f"{ind}if {alnum_end_cond(rng, avoid)}:\n"
    if k == 2:
        return f"{ind}with open({x}) as {rng.choice(('f', 'fh', 'handle', 'stream'))}:\n"
    if k == 3:
        return f"{ind}while {alnum_end_cond(rng, avoid)}:\n"
    return f"{ind}for {x} in range({int_lit(rng, False)}):\n"
