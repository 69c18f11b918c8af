"""Generators for the tasks about definitions and literals: final_kwarg, class_init, bracket_brace,
bracket_counting, var_swap, lambda_func (rows 2, 5, 7, 9, 14, 16 of the paper's Table 1; docs/tasks.md).

Prompts end on a pre-token boundary of the tinypython pre-tokenizer regex (see gen_strings.py). Where a pair's targets
vary (names), the two names start with different letters, so their first tokens differ.
"""

from __future__ import annotations

import random

from .pools import (NOUNS, class_name, docstring, func_name, glue, ident, idents, int_lit, literal, preamble,
                    scaffold, statements, str_lit, words)
from .registry import Pair, _builtin

_DEFAULTS = ("None", "None", "0", "1", "True", "False", "''", '""', "[]", "10", "0.5", '"utf-8"', "-1", "()")


@_builtin("final_kwarg",
          "After a parameter with a default the next one needs a default too: A `def f(a, b=1, c` -> "
          "`=None`; B `def f(a, b, c` -> `):\\n`. The prompts differ only in the `=value`.")
def final_kwarg(rng: random.Random) -> Pair:
    params = idents(rng, rng.randint(2, 5), compound=0.25)
    avoid = tuple(params)
    head = preamble(rng, avoid)
    ind = ""
    first: list[str] = []
    r = rng.random()
    if r < 0.35:  # a method
        head += f"class {class_name(rng)}:\n" + (docstring(rng, "    ") if rng.random() < 0.4 else "")
        if rng.random() < 0.3:
            head += f"    {ident(rng, avoid)} = {literal(rng)}\n\n"
        ind, first = "    ", ["self"]
    elif r < 0.5:  # a nested helper
        head += f"def {func_name(rng, avoid)}({', '.join(idents(rng, rng.randint(0, 2), avoid))}):\n"
        head += statements(rng, "    ", 0, 2, avoid)
        ind = "    "
    if rng.random() < 0.15:
        deco = rng.choice(("@staticmethod", "@classmethod") if first else ("@lru_cache(maxsize=None)", "@cache"))
        head += f"{ind}{deco}\n"
        first = {"@staticmethod": [], "@classmethod": ["cls"]}.get(deco, first)
    lead = ", ".join(first + params[:-2] + [params[-2]])
    sig = f"{head}{ind}def {func_name(rng, avoid)}({lead}"
    last = params[-1]
    default = rng.choice(_DEFAULTS)
    body = f"{ind}    return {last}\n"
    return Pair(f"{sig}={default}, {last}", "=None", f"{sig}, {last}", "):\n", "):\n" + body, body)


@_builtin("class_init",
          "Copy the right name in `__init__`: after `self.a = a` lines, A `self.height =` -> ` height`; "
          "B `self.weight =` -> ` weight`. The prompts differ only in the attribute of the last line.")
def class_init(rng: random.Random) -> Pair:
    while True:
        params = idents(rng, rng.randint(3, 6), compound=0.2)
        m = rng.randint(1, len(params) - 2)
        later = [p for p in params[m + 1:] if p[0] != params[m][0]]
        if later:
            break
    pa, pb = params[m], rng.choice(later)
    under = "_" if rng.random() < 0.25 else ""
    sig = list(params)
    if rng.random() < 0.3:  # defaults on a tail of the parameters
        for i in range(rng.randint(1, len(sig) - 1), len(sig)):
            sig[i] += f"={rng.choice(_DEFAULTS)}"
    head = preamble(rng, tuple(params))
    base = rng.choice(("", "", "", "(object)", f"({class_name(rng)})", "(Base)"))
    head += f"class {class_name(rng)}{base}:\n"
    if rng.random() < 0.5:
        head += docstring(rng, "    ")
    if rng.random() < 0.3:
        head += f"    {ident(rng, tuple(params)).upper()} = {literal(rng)}\n\n"
    head += f"    def __init__(self, {', '.join(sig)}):\n"
    if rng.random() < 0.3:
        head += docstring(rng, "        ")
    if base and rng.random() < 0.5:
        head += "        super().__init__()\n"
    head += "".join(f"        self.{under}{p} = {p}\n" for p in params[:m])
    return Pair(f"{head}        self.{under}{pa} =", f" {pa}", f"{head}        self.{under}{pb} =", f" {pb}",
                "\n", "\n")


@_builtin("bracket_brace",
          "A first element after `{` is a key, after `[` an item: A `d = {\"name` -> `\":`; B `d = [\"name` "
          "-> `\",` (bare keys: `:` vs `,`). The prompts differ only in the bracket.")
def bracket_brace(rng: random.Random) -> Pair:
    var = ident(rng)
    head, ind = scaffold(rng, (var,))
    r = rng.random()
    if r < 0.6:
        q = rng.choice(('"', "'"))
        key_a = q + (ident(rng) if rng.random() < 0.7 else words(rng, 1, 2))
        other = q + ident(rng) + q
        ta, tb = q + ":", q + ","
    elif r < 0.8:
        key_a, other, ta, tb = int_lit(rng, False), int_lit(rng, False), ":", ","
    else:
        key_a, other, ta, tb = ident(rng, (var,)), ident(rng, (var,)), ":", ","
    value = literal(rng)
    start = rng.choice((f"{var} = ", f"{var} = ", "return " if ind else f"{var} = ", f"{func_name(rng)}("))
    close = ")" if start.endswith("(") else ""
    if rng.random() < 0.3:  # one element per line: B's comma takes the newline (`",\n` is one pre-token)
        lead = f"\n{ind}    "
        comp_a = f" {value},\n{ind}}}{close}\n"
        tb, comp_b = glue(tb, f"\n{ind}    {other},\n{ind}]{close}\n")
    else:
        lead = ""
        comp_a = f" {value}}}{close}\n"
        comp_b = f" {other}]{close}\n"
    pre = f"{head}{ind}{start}"
    return Pair(f"{pre}{{{lead}{key_a}", ta, f"{pre}[{lead}{key_a}", tb, comp_a, comp_b)


def _elements(rng: random.Random, n: int) -> list[str]:
    style = rng.randrange(5)
    if style == 0:
        return [str(rng.randint(0, 9)) for _ in range(n)]
    if style == 1:
        return [int_lit(rng) for _ in range(n)]
    if style == 2:
        return [f"{rng.randint(0, 99)}.{rng.randint(0, 99)}" for _ in range(n)]
    if style == 3:
        return [str(rng.randint(-50, 50)) for _ in range(n)]
    return idents(rng, n, compound=0.1) if n <= 8 else [rng.choice(NOUNS) for _ in range(n)]


@_builtin("bracket_counting",
          "Close a list literal at the right depth: A `values = [[5, 3, 11` -> `]]\\n`; B `values = [5, 3, 11` "
          "-> `]\\n`. The prompts differ only in one `[`.")
def bracket_counting(rng: random.Random) -> Pair:
    var = ident(rng)
    head, ind = scaffold(rng, (var,))
    if rng.random() < 0.4:  # a distractor: another (nested) list nearby
        other = ident(rng, (var,))
        rows = [", ".join(_elements(rng, rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        nested = rng.random() < 0.5
        text = ", ".join(f"[{r}]" for r in rows) if nested else rows[0]
        head += f"{ind}{other} = [{text}]\n" + statements(rng, ind, 0, 1, (var,))
    start = f"{var} = " if ind == "" or rng.random() < 0.7 else "return "
    elems = ", ".join(_elements(rng, rng.randint(1, 12)))
    return Pair(f"{head}{ind}{start}[[{elems}", "]]\n", f"{head}{ind}{start}[{elems}", "]\n", "", "")


_SWAPS = (("a", "b"), ("x", "y"), ("left", "right"), ("lo", "hi"), ("first", "second"), ("prev", "curr"),
          ("src", "dst"), ("old", "new"), ("i", "j"), ("p", "q"), ("u", "v"), ("m", "n"), ("low", "high"),
          ("start", "end"), ("head", "tail"), ("top", "bottom"), ("small", "large"), ("key", "value"))


@_builtin("var_swap",
          "Finish a swap `x, y = y, x`: A `a, b = b,` -> ` a`; B `c, b = b,` -> ` c`. The prompts differ "
          "only in the first name; all three names are defined above.")
def var_swap(rng: random.Random) -> Pair:
    x, y = rng.choice(_SWAPS)
    if rng.random() < 0.5:
        x, y = y, x
    flat = [n for pair in _SWAPS for n in pair] + list(NOUNS)
    z = rng.choice([n for n in flat if n[0] != x[0] and n not in (x, y)])
    names = (x, y, z)
    head, ind = scaffold(rng, names, body_hi=1)
    defs = [f"{ind}{n} = {rng.choice((int_lit(rng), str_lit(rng), literal(rng), f'{ident(rng, names)}[0]'))}\n"
            for n in names]
    rng.shuffle(defs)
    body = "".join(d + (statements(rng, ind, 0, 1, names) if rng.random() < 0.3 else "") for d in defs)
    if rng.random() < 0.3:
        body += f"{ind}if {x} > {y}:\n"
        ind += "    "
    pre = head + body + ind
    return Pair(f"{pre}{x}, {y} = {y},", f" {x}", f"{pre}{z}, {y} = {y},", f" {z}", "\n", "\n")


_FUNC_ARGS = ("key", "item", "value", "node", "x", "func", "callback", "handler", "transform", "check",
              "process", "compute", "convert", "fn", "pred", "score", "record", "row", "entry", "line", "text",
              "data", "element", "pair", "obj", "word", "task", "event")
_DEF_PARAMS = ("x", "value", "data", "items", "args", "path", "name", "node", "obj", "text", "item", "n")


@_builtin("lambda_func",
          "A name after `lambda` is a parameter, after `def` a function: A `f = lambda item` -> `:`; "
          "B `def item` -> `(x`. The prompts differ only in `f = lambda` vs `def`.")
def lambda_func(rng: random.Random) -> Pair:
    arg = rng.choice(_FUNC_ARGS)
    var, coll = idents(rng, 2, (arg,))
    head, ind = scaffold(rng, (arg,))
    k = rng.randrange(5)
    if k == 0:
        lam, comp_a = f"{var} = lambda", f" {arg} {rng.choice(('*', '+', '-'))} {int_lit(rng, False)}\n"
    elif k == 1:
        lam, comp_a = f"{var} = sorted({coll}, key=lambda", f" {arg}[{rng.randint(0, 2)}])\n"
    elif k == 2:
        lam, comp_a = f"{var} = list(map(lambda", f" {arg}.{ident(rng)}, {coll}))\n"
    elif k == 3:
        lam, comp_a = f"{var} = {rng.choice(('max', 'min'))}({coll}, key=lambda", f" len({arg}))\n"
    else:
        lam, comp_a = f"{coll}.sort(key=lambda", f" {arg}.{ident(rng)})\n"
    param = rng.choice([p for p in _DEF_PARAMS if p != arg])
    comp_b = f"):\n{ind}    return {param}\n"
    return Pair(f"{head}{ind}{lam} {arg}", ":", f"{head}{ind}def {arg}", f"({param}", comp_a, comp_b)
