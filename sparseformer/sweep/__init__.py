"""Sweeps: train a grid of sparse and dense models, prune every task at several target losses, and report
the interpretability frontier and the sparse-vs-dense circuit-size ratio at matched loss (docs/pruning.md).

    from sparseformer.sweep import load_sweep, run_sweep
    result = run_sweep(load_sweep("bench/sweeps/cpu.toml"))     # resumable; writes results.json/.md + plots

Modules: spec (the sweep file), budget (tokens/minutes -> steps), runner (train, evaluate, prune, with caches),
adapters (the only calls into tasks/ and prune/), compare (circuit size and matched-loss ratio), table
(results.json, results.md), svg + plots (the two figures).
"""

from .runner import ModelOutcome, SweepResult, default_dirs, run_sweep
from .spec import Budget, ModelSpec, PruneSpec, Shape, SweepConfig, load_sweep, run_config, sweep_from_dict

__all__ = ["Budget", "ModelOutcome", "ModelSpec", "PruneSpec", "Shape", "SweepConfig", "SweepResult", "default_dirs",
           "load_sweep", "run_config", "run_sweep", "sweep_from_dict"]
