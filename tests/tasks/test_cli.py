"""`sparseformer tasks list|show` and `sparseformer eval`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

import sparseformer.cli.tasks as cli_tasks
from sparseformer.cli import main
from sparseformer.tasks import BUILTIN_TASKS, Pair, write_jsonl

from .conftest import CausalToy


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_tasks_list():
    text = run("tasks", "list")
    assert text.exit_code == 0 and all(name in text.output for name in BUILTIN_TASKS)
    rows = json.loads(run("tasks", "list", "--json").output)
    assert [r["name"] for r in rows] == list(BUILTIN_TASKS)
    assert set(rows[0]) == {"name", "kind", "source", "description"}


def test_tasks_show():
    out = json.loads(run("tasks", "show", "bracket_counting", "-n", "3", "--json").output)
    assert len(out) == 3 and all(set(p) == {"prompt_a", "target_a", "prompt_b", "target_b"} for p in out)
    assert out[0]["target_a"] == "]]\n" and out[0]["prompt_a"] != out[0]["prompt_b"]
    quotes = json.loads(run("tasks", "show", "single_double_quote", "-n", "2", "--json").output)
    text = run("tasks", "show", "single_double_quote", "-n", "2").output
    assert "pair 1 B: target" in text
    for p in quotes:
        assert p["prompt_a"] + p["target_a"].replace("\n", "\u21b5\n") in text
        assert f"target {p['target_b']!r}" in text
    again = json.loads(run("tasks", "show", "bracket_counting", "-n", "3", "--json").output)
    assert again == out


def test_tasks_show_a_jsonl_file(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [Pair("for x", " in", "while x", ":\n")])
    out = json.loads(run("tasks", "show", str(path), "--json").output)
    assert out == [{"prompt_a": "for x", "target_a": " in", "prompt_b": "while x", "target_b": ":\n"}]


@pytest.mark.parametrize("args, message", [
    (("tasks", "show", "bracket_countin"), "unknown task 'bracket_countin'; did you mean 'bracket_counting'"),
    (("eval", "somewhere", "--tasks", "for_while,nope"), "unknown task 'nope'"),
])
def test_bad_names_give_one_error_line(args, message):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_malformed_jsonl_gives_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt_a": "x"}\n')
    result = CliRunner().invoke(main, ["tasks", "show", str(path)])
    assert result.exit_code == 1 and f"{path}:1: missing target_a" in result.output


@pytest.fixture
def fake_run(monkeypatch, tokenizer):
    loaded = SimpleNamespace(model=CausalToy(vocab=tokenizer.vocab_size), tokenizer=tokenizer)
    monkeypatch.setattr(cli_tasks, "_load_run", lambda path, device: loaded)
    return loaded


def test_eval_prints_a_table_and_json(fake_run, tmp_path):
    text = run("eval", "RUN", "--tasks", "for_while,var_if", "-n", "4")
    lines = text.output.splitlines()
    assert lines[0].split() == ["task", "loss", "accuracy", "n"]
    assert lines[1].split()[0] == "for_while" and lines[1].split()[-1] == "4" and lines[3].startswith("mean")
    custom = write_jsonl(tmp_path / "quotes.jsonl", [Pair('print("a', '")', "print('a", "')")] * 2)
    doc = json.loads(run("eval", "RUN", "--tasks", f"var_if,{custom}", "-n", "4", "--json").output)
    assert [r["task"] for r in doc["results"]] == ["var_if", "quotes"]
    assert [r["n"] for r in doc["results"]] == [4, 2]
    for r in doc["results"]:
        assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0


def test_eval_refuses_a_run_without_tokenizer(monkeypatch):
    monkeypatch.setattr(cli_tasks, "_load_run", lambda path, device: SimpleNamespace(model=CausalToy(), tokenizer=None))
    result = CliRunner().invoke(main, ["eval", "RUN", "--tasks", "for_while"])
    assert result.exit_code == 1 and "has no tokenizer" in result.output


def test_eval_on_a_real_run_directory(tmp_path, tokenizer):
    """An untrained tiny model saved as a run directory, loaded by load_run."""
    from sparseformer.checkpoint import save_checkpoint, save_config
    from sparseformer.config import get_preset
    from sparseformer.model import GPT
    cfg = get_preset("tiny")
    save_config(tmp_path, cfg)
    save_checkpoint(tmp_path, GPT(cfg.model), None, 0, {}, False)
    tokenizer.save(tmp_path / "tokenizer.json")
    doc = json.loads(run("eval", str(tmp_path), "--tasks", "with_as,else_elif", "-n", "3", "--device", "cpu",
                         "--json").output)
    assert [(r["task"], r["n"]) for r in doc["results"]] == [("with_as", 3), ("else_elif", 3)]
    missing = CliRunner().invoke(main, ["eval", str(tmp_path / "nope"), "--tasks", "for_while"])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ")
