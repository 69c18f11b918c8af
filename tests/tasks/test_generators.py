"""The 20 built-in tasks: minimal pairs, valid Python, clean token boundaries, determinism, splits."""

from __future__ import annotations

import re
import warnings

import pytest

from sparseformer.tasks import (BUILTIN_TASKS, encode_pairs, first_token, get_task, list_tasks, make_split,
                                split_of)

N = 48  # pairs per task in the per-pair checks (fast on 2 cores)

_WORD = re.compile(r"\w+|[^\w]")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def word_diff(a: str, b: str) -> tuple[str, str]:
    """The differing middle of a and b, at word granularity: words (\\w+) and single other characters
    shared at the start and at the end are stripped."""
    ta, tb = _WORD.findall(a), _WORD.findall(b)
    assert "".join(ta) == a and "".join(tb) == b
    i = 0
    while i < min(len(ta), len(tb)) and ta[i] == tb[i]:
        i += 1
    j = 0
    while j < min(len(ta), len(tb)) - i and ta[-1 - j] == tb[-1 - j]:
        j += 1
    return "".join(ta[i:len(ta) - j]), "".join(tb[i:len(tb) - j])


def _names(da: str, db: str) -> bool:
    """Two names (attributes may share a leading `_`) whose first letters differ."""
    return bool(re.fullmatch(_NAME, da) and re.fullmatch(_NAME, db)) and da.lstrip("_")[0] != db.lstrip("_")[0]


# What each task's two prompts may differ in (after word_diff), per docs/tasks.md.
EXPECTED_DIFF = {
    "single_double_quote": lambda da, db: (da, db) == ('"', "'"),
    "final_kwarg": lambda da, db: db == "" and re.fullmatch(r"=[^,\n]+", da) is not None,
    "set_or_string": lambda da, db: da == "set()" and db in ('""', "''"),
    "set_or_string_fixedvarname": lambda da, db: da == "set()" and db in ('""', "''"),
    "class_init": _names,
    "with_as": lambda da, db: da == "with" and re.fullmatch(_NAME + " =", db) is not None,
    "bracket_brace": lambda da, db: (da, db) == ("{", "["),
    "with_open": lambda da, db: re.fullmatch(r"\w+", da) and re.fullmatch(r"\w+", db) and da != db,
    "bracket_counting": lambda da, db: (da, db) == ("[", ""),
    "for_while": lambda da, db: (da, db) == ("for", "while"),
    "else_elif": lambda da, db: (da, db) == ("else", "elif"),
    "fstring_brace": lambda da, db: (da, db) == ("f", ""),
    "if_ternary": lambda da, db: da == "" and re.fullmatch(rf"({_NAME} \+?= |return )\S.* ", db) is not None,
    "var_swap": _names,
    "indent_for": lambda da, db: (da, db) == ("    ", ""),
    "lambda_func": lambda da, db: db == "def" and da.endswith("lambda") and "\n" not in da,
    "if_equals": lambda da, db: db == "" and da in ("if ", "elif ", "assert "),
    "enumerate_range": lambda da, db: db == "" and re.fullmatch(", " + _NAME, da) is not None,
    "var_if": lambda da, db: da == f"if {db}=" and re.fullmatch(rf"{_NAME}(\.{_NAME})? ", db) is not None,
    "while_return_true": lambda da, db: (da, db) == ("while", "return"),
}


@pytest.fixture(scope="module")
def pairs() -> dict:
    return {name: make_split(get_task(name), "test", N, seed=0) for name in BUILTIN_TASKS}


def test_all_twenty_tasks_are_registered_in_spec_order():
    assert len(BUILTIN_TASKS) == 20
    assert [t.name for t in list_tasks()][:20] == list(BUILTIN_TASKS)
    assert set(EXPECTED_DIFF) == set(BUILTIN_TASKS)
    assert get_task("else_elif").kind == "full_vocab"
    assert all(get_task(n).description for n in BUILTIN_TASKS)


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_prompts_differ_only_in_the_task_spot(name, pairs):
    for p in pairs[name]:
        da, db = word_diff(p.prompt_a, p.prompt_b)
        assert EXPECTED_DIFF[name](da, db), f"{name}: prompts differ in {da!r} vs {db!r}"
        assert p.target_a != p.target_b


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_completed_snippets_are_valid_python(name, pairs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SyntaxWarnings (`x is 3`) count as failures too
        for p in pairs[name]:
            for prompt, target, rest in ((p.prompt_a, p.target_a, p.completion_a),
                                         (p.prompt_b, p.target_b, p.completion_b)):
                try:
                    compile(prompt + target + rest, name, "exec")
                except SyntaxError as e:
                    pytest.fail(f"{name}: {e}\n{prompt + target + rest}")


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_targets_are_clean_next_tokens(name, pairs, tokenizer):
    """The scored token is what the tokenizer emits after the prompt, both for prompt + target and for
    the completed line; no pair is dropped and the two targets never share a first token."""
    batch = encode_pairs(pairs[name], tokenizer, task=name, kind=get_task(name).kind)
    assert batch.n_dropped == 0 and len(batch) == N
    assert bool((batch.target_a != batch.target_b).all())
    for p in pairs[name]:
        for prompt, target, rest in ((p.prompt_a, p.target_a, p.completion_a),
                                     (p.prompt_b, p.target_b, p.completion_b)):
            ids, tok = tokenizer.encode(prompt), first_token(tokenizer, target)
            for text in (prompt + target, prompt + target + rest):
                assert tokenizer.encode(text)[:len(ids) + 1] == ids + [tok], (name, prompt[-40:], target, rest[:20])


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_deterministic_and_seeded(name, pairs):
    task = get_task(name)
    assert make_split(task, "test", N, seed=0) == pairs[name]
    assert make_split(task, "test", N // 2, seed=0) == pairs[name][:N // 2]
    other = make_split(task, "test", N, seed=1)
    assert len({p.key() for p in other} & {p.key() for p in pairs[name]}) < N // 4


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_train_and_test_are_disjoint(name, pairs):
    task = get_task(name)
    train = make_split(task, "train", 2 * N, seed=0) + make_split(task, "train", N, seed=1)
    test = pairs[name] + make_split(task, "test", N, seed=1)
    assert all(split_of(p) == "train" for p in train) and all(split_of(p) == "test" for p in test)
    assert not {p.key() for p in train} & {p.key() for p in test}
    assert len({p.key() for p in pairs[name]}) == N  # no repeats within a split


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_surface_varies(name, pairs):
    """Names, values, surrounding code and lengths change from pair to pair."""
    ps = pairs[name]
    tails = {"\n".join(p.prompt_a.splitlines()[-3:]) for p in ps}
    lengths = {len(p.prompt_a) for p in ps}
    line_counts = {p.prompt_a.count("\n") for p in ps}
    assert len(tails) >= 0.8 * N, f"{name}: only {len(tails)} distinct endings in {N} pairs"
    assert len(lengths) >= 0.6 * N and len(line_counts) >= 8


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_at_least_512_test_pairs(name):
    assert len(make_split(get_task(name), "test", 512, seed=0)) == 512
