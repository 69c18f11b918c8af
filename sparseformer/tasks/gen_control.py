"""Generators for the control-flow tasks: for_while, else_elif, if_ternary, indent_for, if_equals,
enumerate_range, var_if, while_return_true (rows 10, 11, 13, 15, 17-20 of the paper's Table 1; docs/tasks.md).

Prompts end on a pre-token boundary of the tinypython pre-tokenizer regex (see gen_strings.py): a line that a target
`:\\n` or `\\n` ends always ends with a letter or digit.
"""

from __future__ import annotations

import random

from .pools import alnum_end_cond, block_header, func_name, ident, idents, int_lit, literal, scaffold, statements
from .registry import Pair, _builtin

_LOOP_NAMES = ("item", "node", "line", "chunk", "task", "job", "current", "batch", "entry", "token", "row",
               "record", "event", "msg", "frame", "packet", "block", "page", "cursor", "child", "request")


@_builtin("for_while",
          "A loop header continues by its kind: A `for item` -> ` in`; B `while item` -> `:\\n`. "
          "The prompts differ only in `for` vs `while`.")
def for_while(rng: random.Random) -> Pair:
    name = rng.choice(_LOOP_NAMES)
    head, ind = scaffold(rng, (name,))
    coll = ident(rng, (name,))
    stmt = rng.choice((f"{name} = {func_name(rng)}({name})", f"{ident(rng, (name,))}.append({name})",
                       f"print({name})", f"{name} = {name}.{ident(rng, (name,))}"))
    return Pair(f"{head}{ind}for {name}", " in", f"{head}{ind}while {name}", ":\n",
                f" {coll}:\n{ind}    {stmt}\n", f"{ind}    {stmt}\n")


@_builtin("else_elif",
          "Full-vocabulary task: after `else` comes `:` (A -> `:\\n`); after `elif` anything but `:` "
          "(B, e.g. ` x`). The prompts differ only in `else` vs `elif`.", kind="full_vocab")
def else_elif(rng: random.Random) -> Pair:
    head, ind = scaffold(rng)
    inner = ind + "    "
    text = f"{head}{ind}if {alnum_end_cond(rng)}:\n" + statements(rng, inner, 1, 2)
    if rng.random() < 0.3:
        text += f"{ind}elif {alnum_end_cond(rng)}:\n" + statements(rng, inner, 1, 2)
    var = ident(rng)
    comp_b = f" {rng.choice(('>', '<', '==', '!=', '>='))} {int_lit(rng, False)}:\n" + statements(rng, inner, 1, 1)
    return Pair(f"{text}{ind}else", ":\n", f"{text}{ind}elif", f" {var}", statements(rng, inner, 1, 2), comp_b)


@_builtin("if_ternary",
          "An `if` that starts a statement ends with `:`; one inside an expression continues with ` else`: "
          "A `if x > 0` -> `:\\n`; B `y = a if x > 0` -> ` else`. B only inserts `y = a ` before `if`.")
def if_ternary(rng: random.Random) -> Pair:
    k = rng.randrange(4)
    head, ind = scaffold(rng, need_function=(k == 3))
    var = ident(rng)
    value = rng.choice((literal(rng), ident(rng), f"{func_name(rng)}({ident(rng)})"))
    lead = (f"{var} = {value} ", f"{var} = {value} ", f"{var} += {value} ", f"return {value} ")[k]
    cond = alnum_end_cond(rng, (var,))
    return Pair(f"{head}{ind}if {cond}", ":\n", f"{head}{ind}{lead}if {cond}", " else",
                statements(rng, ind + "    ", 1, 2), f" {literal(rng)}\n")


@_builtin("indent_for",
          "The body of a `for` is indented one level deeper than its header: A (header at depth d+1) -> "
          "4(d+2) spaces; B (header at depth d, after a block) -> 4(d+1) spaces. The prompts differ only in "
          "the header's indentation; targets include the body's first word.")
def indent_for(rng: random.Random) -> Pair:
    x, coll, acc = idents(rng, 3, compound=0.2)
    avoid = (x, coll, acc)
    head, ind = scaffold(rng, avoid, max_depth=2)
    head += block_header(rng, ind, avoid) + statements(rng, ind + "    ", 1, 3, avoid)
    header = rng.choice((f"for {x} in {coll}:\n", f"for {x} in range(len({coll})):\n",
                         f"for {x}, {ident(rng, avoid)} in {coll}.items():\n", f"for {x} in sorted({coll}):\n"))
    word, rest = rng.choice(((acc, f" += {x}\n"), (acc, f" = {func_name(rng)}({x})\n"), ("print", f"({x})\n"),
                             (acc, f".append({x})\n"), ("yield", f" {x}\n") if ind else (acc, f" -= {x}\n")))
    deep, shallow = ind + "    ", ind
    return Pair(f"{head}{deep}{header}", f"{deep}    {word}", f"{head}{shallow}{header}", f"{shallow}    {word}",
                rest, rest)


_ATTR_OWNERS = ("self", "args", "config", "options", "settings", "state", "ctx")


@_builtin("if_equals",
          "In a condition a name is compared, at a statement start it is assigned: A `if mode` -> ` ==`; "
          "B `mode` -> ` =`. B only drops the `if ` (or `elif `, `assert `).")
def if_equals(rng: random.Random) -> Pair:
    var = ident(rng)
    if rng.random() < 0.3:
        var = f"{rng.choice(_ATTR_OWNERS)}.{var}"
    head, ind = scaffold(rng, (var,))
    inner = ind + "    "
    value = rng.choice((int_lit(rng), literal(rng), ident(rng, (var,)), f'"{ident(rng)}"'))
    r = rng.random()
    if r < 0.7:
        kw, comp_a = "if ", f" {value}:\n" + statements(rng, inner, 1, 2)
    elif r < 0.85:
        head += f"{ind}if {alnum_end_cond(rng, (var,))}:\n" + statements(rng, inner, 1, 2)
        kw, comp_a = "elif ", f" {value}:\n" + statements(rng, inner, 1, 2)
    else:
        kw, comp_a = "assert ", f" {value}\n"
    return Pair(f"{head}{ind}{kw}{var}", " ==", f"{head}{ind}{var}", " =", comp_a, f" {value}\n")


_INDEX_NAMES = ("i", "idx", "index", "j", "k", "n", "pos", "position", "num", "step", "lineno", "row_index")


@_builtin("enumerate_range",
          "A loop over index and value uses enumerate, over an index alone range: A `for i, v in` -> "
          "` enumerate`; B `for i in` -> ` range`. B only drops `, v`.")
def enumerate_range(rng: random.Random) -> Pair:
    i = rng.choice(_INDEX_NAMES)
    v, coll, acc = idents(rng, 3, (i,), compound=0.2)
    head, ind = scaffold(rng, (i, v, coll))
    inner = ind + "    "
    comp_a = f"({coll}):\n{inner}{acc}[{i}] = {v}\n"
    comp_b = rng.choice((f"(len({coll})):\n{inner}{acc}[{i}] = {coll}[{i}]\n",
                         f"({int_lit(rng, False)}):\n{inner}{acc}.append({i})\n"))
    return Pair(f"{head}{ind}for {i}, {v} in", " enumerate", f"{head}{ind}for {i} in", " range", comp_a, comp_b)


@_builtin("var_if",
          "A comparison in an `if` ends with `:`, an assignment with a newline: A `if done == True` -> `:\\n`; "
          "B `done = True` -> `\\n`. The prompts differ only in `if x ==` vs `x =`.")
def var_if(rng: random.Random) -> Pair:
    var = ident(rng)
    if rng.random() < 0.25:
        var = f"{rng.choice(_ATTR_OWNERS)}.{var}"
    head, ind = scaffold(rng, (var,))
    value = rng.choice(("True", "True", "False", "False", "None", int_lit(rng, False)))
    return Pair(f"{head}{ind}if {var} == {value}", ":\n", f"{head}{ind}{var} = {value}", "\n",
                statements(rng, ind + "    ", 1, 2), "")


@_builtin("while_return_true",
          "`while True` opens a block, `return True` ends a line: A `while True` -> `:\\n`; B `return True` "
          "-> `\\n`. The prompts differ only in `while` vs `return`.")
def while_return_true(rng: random.Random) -> Pair:
    head, ind = scaffold(rng, need_function=True)
    inner = ind + "    "
    comp_a = statements(rng, inner, 1, 2) + f"{inner}if {alnum_end_cond(rng)}:\n{inner}    break\n"
    return Pair(f"{head}{ind}while True", ":\n", f"{head}{ind}return True", "\n", comp_a, "")
