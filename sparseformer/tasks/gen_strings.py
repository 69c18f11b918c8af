"""Generators for the string and file tasks: single_double_quote, set_or_string(_fixedvarname), with_as,
with_open, fstring_brace (rows 1, 3, 4, 6, 8, 12 of the paper's Table 1; docs/tasks.md).

Every prompt ends on a pre-token boundary of the tinypython pre-tokenizer regex (a letter or digit, or a punctuation
run followed by a letter), so that encode(prompt + target) starts with encode(prompt): the target's
text never merges with the prompt's last token. Closing punctuation is therefore part of the target
(`) as` vs `)\n`), never the end of the prompt.
"""

from __future__ import annotations

import random

from .pools import func_name, glue, ident, idents, int_lit, literal, scaffold, statements, words
from .registry import Pair, _builtin

# Calls whose last argument is a string literal: (text before the string, text after its closing `")`).
_STRING_CALLS = (
    ("print(", "\n"), ("logger.info(", "\n"), ("logging.error(", "\n"), ("raise ValueError(", "\n"),
    ("raise ValueError(", " from None\n"), ("raise KeyError(", " from {y}\n"), ("warnings.warn(", "\n"),
    ("{x}.append(", "\n"), ("{x}.write(", "\n"), ("{x} = os.path.join({y}, ", "\n"),
    ("{x} = {y}.get({z}, ", "\n"), ("{x} = {y}.get(", " or {z}\n"), ("{x} = os.environ.get(", " or {z}\n"),
    ("{x} = {y}.split(", "\n"), ("{x} = {y}.replace({z}, ", "\n"), ("print({x}, ", "\n"),
    ("{x} = re.compile(", "\n"), ("sys.stdout.write(", "\n"), ("self.assertEqual({x}, ", "\n"),
    ("if {x}.startswith(", ":\n{ind}    pass\n"), ("if {x}.endswith(", " and {y}:\n{ind}    pass\n"),
    ("{x} = {y}.count(", " > {n}\n"), ("{x} = {y}.strip(", "\n"), ("{x} = len({y}.split(", ")\n"),
    ("{x}.set_title(", "\n"),
)


@_builtin("single_double_quote",
          "Close a string with the quote that opened it. A: `(\"text` -> `\")`; B: `('text` -> `')` (with "
          "the newline when the line ends there, as the tokenizer sees it). The prompts differ only in the "
          "opening quote.")
def single_double_quote(rng: random.Random) -> Pair:
    head, ind = scaffold(rng)
    call, tail = rng.choice(_STRING_CALLS)
    x, y, z = idents(rng, 3)
    call = call.format(x=x, y=y, z=z)
    tail = tail.format(ind=ind, y=y, z=z, n=int_lit(rng, False))
    text = words(rng, 1, 7)
    target_a, comp = glue('")', tail)
    target_b, _ = glue("')", tail)
    return Pair(f'{head}{ind}{call}"{text}', target_a, f"{head}{ind}{call}'{text}", target_b, comp, comp)


def _set_or_string(rng: random.Random, var: str) -> Pair:
    """`var = set()` vs `var = ""`, a loop, then `var` at a line start -> `.add` vs ` +=`."""
    avoid = (var,)
    head, ind = scaffold(rng, avoid, max_depth=2, body_hi=1)
    item, coll, other = idents(rng, 3, avoid, compound=0.2)
    mid = statements(rng, ind, 0, 2, avoid + (item,))
    inner = ind + "    "
    if rng.random() < 0.4:
        loop = f"{ind}for {item}, {other} in {coll}.items():\n"
    else:
        loop = f"{ind}for {item} in {coll}:\n"
    if rng.random() < 0.6:
        cond = rng.choice((f"{item} not in {other}", f"{item}", f"not {item}.startswith({other})",
                           f"len({item}) > {int_lit(rng, False)}", f"{item} != {other}"))
        loop += f"{inner}if {cond}:\n"
        inner += "    "
    loop += statements(rng, inner, 0, 1, avoid + (item,))
    empty = rng.choice(('""', "''"))
    pre, post = f"{head}{ind}{var} = ", f"\n{mid}{loop}{inner}{var}"
    return Pair(pre + "set()" + post, ".add", pre + empty + post, " +=", f"({item})\n", f" {item}\n")


@_builtin("set_or_string",
          "Variable initialised as `set()` (A) or `\"\"` (B), used after a loop header: A -> `.add`, "
          "B -> ` +=`. The name varies between pairs; the prompts differ only in the initial value.")
def set_or_string(rng: random.Random) -> Pair:
    return _set_or_string(rng, ident(rng, ("current",)))


@_builtin("set_or_string_fixedvarname",
          "As set_or_string, but the variable is always `current`: A `current = set()` -> `.add`, "
          "B `current = \"\"` -> ` +=`.")
def set_or_string_fixedvarname(rng: random.Random) -> Pair:
    return _set_or_string(rng, "current")


_HANDLES = ("f", "fh", "fp", "handle", "stream", "infile", "src", "file_obj")
_OPENERS = ("open", "open", "open", "io.open", "gzip.open", "codecs.open")


@_builtin("with_as",
          "A file opened in a `with` statement continues with ` as`: A `with open(path` -> `) as`; "
          "B `fh = open(path` -> `)\\n`. The prompts differ only in `with` vs `fh =`.")
def with_as(rng: random.Random) -> Pair:
    fh = rng.choice(_HANDLES)
    avoid = (fh,)
    head, ind = scaffold(rng, avoid)
    path, text, base = idents(rng, 3, avoid)
    q = rng.choice(('"', "'"))
    # The last argument always ends with a letter: a closing quote would glue to `)` (`")`) on both sides.
    args = rng.choice((path, path, f"{path}, mode", f"{path}, {q}{rng.choice(('r', 'w', 'rb', 'a'))}{q}, encoding=enc",
                       f"{base} / {path}", f"{path}, encoding=encoding", f"{path}, newline={q}{q}, encoding=enc"))
    call = f"{rng.choice(_OPENERS)}({args}"
    comp_a = f" {fh}:\n{ind}    {text} = {fh}.read()\n"
    comp_b = f"{ind}{text} = {fh}.read()\n{ind}{fh}.close()\n"
    return Pair(f"{head}{ind}with {call}", ") as", f"{head}{ind}{fh} = {call}", ")\n", comp_a, comp_b)


# (read name, write name): a variable or a file stem that says which way the data flows.
_IN_OUT = (("input_path", "output_path"), ("input_file", "output_file"), ("in_path", "out_path"),
           ("infile", "outfile"), ("src_path", "dst_path"), ("source_file", "target_file"),
           ("read_path", "write_path"), ("input_name", "output_name"), ("in_file", "out_file"),
           ("input_filename", "output_filename"), ("source_path", "dest_path"))
_IN_OUT_STEMS = (("input", "output"), ("in", "out"), ("source", "target"), ("src", "dst"),
                 ("inputs", "outputs"), ("data_in", "data_out"))


@_builtin("with_open",
          "File mode from the file's name: A `open(input_path, '` -> `r`; B `open(output_path, '` -> `w`. "
          "The prompts differ only in the name (variable or file stem).")
def with_open(rng: random.Random) -> Pair:
    fh = rng.choice(_HANDLES)
    head, ind = scaffold(rng, (fh,))
    q = rng.choice(('"', "'"))
    if rng.random() < 0.6:
        name_a, name_b = rng.choice(_IN_OUT)
    else:
        stem_a, stem_b = rng.choice(_IN_OUT_STEMS)
        ext = rng.choice(("txt", "csv", "json", "log", "dat", "md", "tsv"))
        folder = rng.choice(("", "", "data/", "tmp/", "results/", "files/"))
        lq = rng.choice(('"', "'"))
        name_a, name_b = (f"{lq}{folder}{s}.{ext}{lq}" for s in (stem_a, stem_b))
    mode_kw = "mode=" if rng.random() < 0.2 else ""
    text = ident(rng, (fh,))
    if rng.random() < 0.75:
        tmpl = f"{ind}with open({{}}, {mode_kw}{q}"
        comp_a = f"{q}) as {fh}:\n{ind}    {text} = {fh}.read()\n"
        comp_b = f"{q}) as {fh}:\n{ind}    {fh}.write({text})\n"
    else:
        tmpl = f"{ind}{fh} = open({{}}, {mode_kw}{q}"
        comp_a = comp_b = f"{q})\n"
    return Pair(head + tmpl.format(name_a), "r", head + tmpl.format(name_b), "w", comp_a, comp_b)


# How an f-string or format string is used: (opening text, closing text after the string).
_FORMAT_USES = (("print(", ")"), ("logger.info(", ")"), ("{msg} = ", ""), ("raise ValueError(", ")"),
                ("{lines}.append(", ")"), ("log.debug(", ")"), ("sys.stdout.write(", ")"))


@_builtin("fstring_brace",
          "Inside an f-string the brace takes a variable name: A `print(f\"total: {` -> `total`; in a plain "
          "string (B `print(\"total: {`) -> `0` (a `.format` index). The prompts differ only in the `f`.")
def fstring_brace(rng: random.Random) -> Pair:
    var = ident(rng)
    avoid = (var,)
    head, ind = scaffold(rng, avoid)
    src, msg, lines = idents(rng, 3, avoid)
    value = rng.choice((f"len({src})", f"sum({src})", literal(rng), f"{func_name(rng)}({src})",
                        f"{src}.{rng.choice(('count', 'get', 'pop'))}()", f"max({src})"))
    setup = f"{ind}{var} = {value}\n" + statements(rng, ind, 0, 2, avoid)
    label = var.replace("_", " ")
    label = rng.choice((f"{label}: ", f"{label} = ", f"{label}=", f"{label.capitalize()}: ",
                        f"{words(rng, 1, 3)} {label}: ", f"{words(rng, 1, 4)} ", f"{label} is "))
    use, close = rng.choice(_FORMAT_USES)
    use = use.format(msg=msg, lines=lines)
    q = rng.choice(('"', "'"))
    pre = f"{head}{setup}{ind}{use}"
    return Pair(f"{pre}f{q}{label}{{", var, f"{pre}{q}{label}{{", "0",
                f"}}{q}{close}\n", f"}}{q}.format({var}){close}\n")
