"""The quickstart's circuit step: the paper's task when the model reaches its target, else an explicit fallback."""

from __future__ import annotations

import pytest

import sparseformer.pipeline as pipeline
from sparseformer.pipeline import RELAXED_FACTOR, check_reusable, prune_with_fallback
from sparseformer.errors import PruneError

ROWS = [{"task": "for_while", "loss": 0.5}, {"task": "else_elif", "loss": 0.2}, {"task": "var_if", "loss": 0.9}]


def test_reachable_task_is_pruned_at_the_paper_target_without_a_note(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "prune_task", lambda run, task, **kw: calls.append((task, kw)) or "circuit")
    result, note = prune_with_fallback("run", "single_double_quote", ROWS, progress=False)
    assert (result, note) == ("circuit", None)
    assert calls == [("single_double_quote", {"progress": False})]


def test_unreachable_task_falls_back_to_the_best_learned_task_and_says_so(monkeypatch):
    calls = []

    def fake(run, task, target_loss=0.15, progress=False):
        calls.append((task, target_loss))
        if task == "single_double_quote":
            raise PruneError("the unpruned model's loss on single_double_quote is 0.7 per sequence")
        return "fallback circuit"

    monkeypatch.setattr(pipeline, "prune_task", fake)
    result, note = prune_with_fallback("run", "single_double_quote", ROWS, progress=False)
    assert result == "fallback circuit"
    assert calls == [("single_double_quote", 0.15), ("else_elif", pytest.approx(RELAXED_FACTOR * 0.2))]
    assert "0.7 per sequence" in note and "else_elif" in note and str(round(RELAXED_FACTOR * 0.2, 4)) in note


def test_a_run_from_another_config_is_not_silently_reused(tmp_path):
    from sparseformer.checkpoint import save_config
    from sparseformer.config import apply_overrides, get_preset
    from sparseformer.errors import ConfigError

    save_config(tmp_path, apply_overrides(get_preset("tiny"), ["train.device=cpu"]))
    check_reusable(tmp_path, apply_overrides(get_preset("tiny"), ["train.device=auto"]))   # same run: fine
    with pytest.raises(ConfigError, match=r"train.steps=1500.*not the tiny preset's 500.*--force") as e:
        check_reusable(tmp_path, apply_overrides(get_preset("tiny"), ["train.steps=500"]))
    assert "\n" not in str(e.value)


def test_quickstart_prints_the_circuit_before_and_after_cleaning(monkeypatch):
    from click.testing import CliRunner

    from sparseformer.cli import main
    circuit = {"task": "single_double_quote", "target_loss": 0.15, "full_loss": 0.09, "loss": 0.148,
               "necessity_loss": 1.1, "random_loss": 1.4, "nodes": 70, "edges": 201, "bias_edges": 9,
               "sufficient": True, "json": "c.json", "viewer": "c.html",
               "before_cleaning": {"nodes": 114, "edges": 326, "loss": 0.140, "evals": 220, "seconds": 130.0}}
    summary = {"run": "runs/q", "step": 1500, "val_loss": 3.9, "eval": [{"task": "for_while", "loss": 0.3,
               "accuracy": 0.9}], "eval_file": "e.json", "circuit_note": None, "circuit": circuit,
               "seconds": {"train": 1.0, "eval": 1.0, "prune": 1.0, "total": 3.0}}
    monkeypatch.setattr(pipeline, "quickstart", lambda out, **kw: summary)
    res = CliRunner().invoke(main, ["quickstart", "--out", "runs/q"])
    assert res.exit_code == 0, res.output
    assert "bisection kept 114 nodes, 326 edges at loss 0.1400; cleaning (220 evaluations, 130 s)" in res.output
    assert "circuit for single_double_quote: 70 nodes, 201 edges; loss 0.1480 (reaches the target 0.15" in res.output
