"""Custom tasks: JSONL files, the registration API, and task lookup."""

from __future__ import annotations

import json
import random

import pytest

from sparseformer.errors import TaskError
from sparseformer.tasks import (BUILTIN_TASKS, Pair, get_task, list_tasks, load_jsonl_task, make_batch,
                                make_split, register_task, resolve_tasks, unregister_task, write_jsonl)

PAIRS = [Pair('print("hi', '")', "print('hi", "')"), Pair("x = [[1, 2", "]]\n", "x = [1, 2", "]\n"),
         Pair("for item", " in", "while item", ":\n")]


def test_jsonl_round_trip_and_splits(tmp_path):
    path = write_jsonl(tmp_path / "my_pairs.jsonl", PAIRS)
    task = load_jsonl_task(path)
    assert task.name == "my_pairs" and task.pairs == tuple(PAIRS) and task.source == str(path)
    assert make_split(task, "test", 512) == PAIRS and make_split(task, "train", 2) == PAIRS[:2]
    lines = [json.dumps(p.to_dict() | extra) for p, extra in zip(PAIRS, ({"split": "train"}, {"id": 7}, {}))]
    (tmp_path / "marked.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    marked = load_jsonl_task(tmp_path / "marked.jsonl")
    assert make_split(marked, "test", 10) == PAIRS[1:] and make_split(marked, "train", 10) == PAIRS


def test_a_jsonl_task_encodes(tmp_path, tokenizer):
    task = load_jsonl_task(write_jsonl(tmp_path / "p.jsonl", PAIRS))
    batch = make_batch(task, tokenizer, n=10)
    assert len(batch) == 3 and batch.task == "p"


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt_a": "a", "target_a": "b", "prompt_b": "c"}', "missing target_b"),
    ('{"prompt_a": "a", "target_a": 3, "prompt_b": "c", "target_b": "d"}', "target_a must be strings"),
    ('{"prompt_a": "a", "target_a": "", "prompt_b": "c", "target_b": "d"}', "target_a is empty"),
    ('{"prompt_a": "a", "target_a": "b", "prompt_b": "c", "target_b": "d", "split": "dev"}', "split='dev'"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PAIRS[0].to_dict()) + "\n\n" + line + "\n")
    with pytest.raises(TaskError) as err:
        load_jsonl_task(path)
    msg = str(err.value)
    assert f"{path}:3:" in msg and problem in msg and "\n" not in msg


def test_missing_or_empty_jsonl(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_jsonl_task(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(TaskError, match="has no pairs"):
        load_jsonl_task(tmp_path / "empty.jsonl")


def test_register_a_generator():
    @register_task("test_user_task", description="x vs y")
    def gen(rng: random.Random) -> Pair:
        n = rng.randint(0, 10**6)
        return Pair(f"a{n} = b", " +", f"a{n} += b", "\n")

    try:
        task = get_task("test_user_task")
        assert task.source == "user" and task.description == "x vs y" and task.kind == "binary"
        assert [t.name for t in list_tasks()][:20] == list(BUILTIN_TASKS) and list_tasks()[-1] is task
        assert make_split(task, "train", 20, seed=3) == make_split(task, "train", 20, seed=3)
        with pytest.raises(TaskError, match="already registered"):
            register_task("test_user_task")(gen)
        register_task("test_user_task", replace=True, kind="full_vocab")(gen)
        assert get_task("test_user_task").kind == "full_vocab"
    finally:
        unregister_task("test_user_task")
    with pytest.raises(TaskError, match="unknown task"):
        get_task("test_user_task")


def test_bad_registrations():
    with pytest.raises(TaskError, match="bad task name"):
        register_task("a,b")
    with pytest.raises(TaskError, match="bad task name"):
        register_task("all")
    with pytest.raises(TaskError, match="kind"):
        register_task("test_bad_kind", kind="ternary")(lambda rng: PAIRS[0])
    unregister_task("test_bad_kind")


def test_a_generator_without_variety_cannot_fill_a_split():
    @register_task("test_constant")
    def constant(rng):
        return PAIRS[0]

    try:
        with pytest.raises(TaskError, match="distinct"):
            make_split(get_task("test_constant"), "test", 5)
    finally:
        unregister_task("test_constant")


def test_lookup_and_selection(tmp_path):
    with pytest.raises(TaskError) as err:
        get_task("bracket_countin")
    assert "did you mean 'bracket_counting'" in str(err.value)
    assert [t.name for t in resolve_tasks("all")] == list(BUILTIN_TASKS)
    assert [t.name for t in resolve_tasks(None)] == list(BUILTIN_TASKS)
    path = write_jsonl(tmp_path / "extra.jsonl", PAIRS)
    picked = resolve_tasks(f"for_while, {path},for_while")
    assert [t.name for t in picked] == ["for_while", "extra"]
    with pytest.raises(TaskError, match="no task given"):
        resolve_tasks(" , ")
    with pytest.raises(TaskError, match="split="):
        make_split(get_task("for_while"), "dev", 3)
