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
