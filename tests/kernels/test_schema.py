"""The table layouts of kernels/_schema.py against csrc/sf_kernels.h: the same constants and columns.

The header declares each Python table class `Name` as `namespace name { enum : int { kColumn, ... }; }`
(snake-case namespace, `k` + CamelCase enumerators in column order); scalar constants and dtype codes are
pinned too.
"""

import os
import re

import torch

from sparseformer.kernels import _schema

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "sf_kernels.h")


def _camel(upper: str) -> str:
    return "k" + "".join(part.capitalize() for part in upper.split("_"))


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


def _top_level(text: str) -> dict[str, int]:
    """The `constexpr` scalar constants of namespace sf (literals and `1 << n` only)."""
    out = {}
    for name, value in re.findall(r"constexpr\s+\w+\s+(\w+)\s*=\s*([^;]+);", text):
        value = value.strip().replace("int64_t(1)", "1").rstrip("u")
        if re.fullmatch(r"[0-9xXa-fA-F<\s]+", value):
            out[name] = eval(value)
    return out


def _header():
    """({namespace: {enumerator: value}}, {top-level constant: value}) of the header."""
    text = re.sub(r"//[^\n]*", "", open(HEADER).read())
    top = _top_level(text)
    spaces = {}
    for space, body in re.findall(r"namespace\s+(?!sf\b)(\w+)\s*\{\s*enum\s*:\s*int\s*\{(.*?)\};\s*\}", text, re.S):
        values, nxt = {}, 0
        for item in (i.strip() for i in body.split(",") if i.strip()):
            name, _, expr = (p.strip() for p in item.partition("="))
            nxt = eval(expr, {}, {**top, **values}) if expr else nxt
            values[name], nxt = nxt, nxt + 1
        spaces[space] = values
    return spaces, top


def test_every_table_matches_the_header():
    spaces, _ = _header()
    for table in _schema.TABLES:
        space = _snake(table.__name__)
        assert space in spaces, f"csrc/sf_kernels.h has no namespace {space} for {table.__name__}"
        expected = {_camel(name): index for name, index in _schema.columns(table).items()}
        assert spaces[space] == expected, f"{table.__name__} differs from namespace {space}"
    tables = {_snake(t.__name__) for t in _schema.TABLES}
    assert set(spaces) - tables == {"dtype_code"}, "a header namespace has no Python table"


def test_constants_and_dtype_codes_match_the_header():
    spaces, top = _header()
    assert top["kBins"] == _schema.NB == 1 << _schema.LOG_NB
    assert top["kBlock"] == _schema.CUDA_BLOCK
    assert top["kProt"] == _schema.PROT
    assert top["kInfBits"] == _schema.INF_BITS
    names = {torch.float32: "kFloat32", torch.float16: "kFloat16", torch.bfloat16: "kBfloat16",
             torch.float64: "kFloat64"}
    assert spaces["dtype_code"] == {names[d]: code for d, code in _schema.DTYPE_CODES.items()}


def test_columns_are_distinct_and_fit_their_width():
    for table in _schema.TABLES:
        cols = _schema.columns(table)
        width = cols.pop("WIDTH")
        assert sorted(cols.values()) == list(range(len(cols))) or table is _schema.Hist
        assert max(cols.values()) < width
    assert _schema.Hist.WIDTH == _schema.Hist.FIRST_BIN + _schema.NB
