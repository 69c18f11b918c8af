"""The one place the sweep calls the task suite and the pruner; everything else in sweep/ sees plain dicts.

Evaluation is `sparseformer.tasks.evaluate`; pruning is `sparseformer.prune.prune_targets`, which trains the
masks once per trial and bisects at every target loss on the same node ranking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from ..errors import TaskError

log = logging.getLogger(__name__)


def task_names(spec: Sequence[str]) -> list[str]:
    """Resolve the sweep's task list ("all", names, .jsonl paths) to task names, in order."""
    from ..tasks import resolve_tasks
    return [t.name for t in resolve_tasks(list(spec))]


def evaluate_tasks(run, tasks: Sequence[str], *, n: int, seed: int = 0) -> list[dict]:
    """Per task {task, loss, accuracy, n} on held-out pairs, or {task, error} when the task cannot be
    posed with this run's tokenizer (the message says why)."""
    from ..tasks import evaluate
    rows = []
    for name in tasks:
        try:
            row = evaluate(run.model, run.tokenizer, [name], n=n, split="test", seed=seed)[0]
        except TaskError as e:
            log.warning("%s: task %s cannot be evaluated: %s", run.path.name, name, e)
            rows.append({"task": name, "error": str(e)})
            continue
        rows.append({k: row[k] for k in ("task", "loss", "accuracy", "n")})
    return rows


def prune_targets(run, task: str, targets: Sequence[float], *, steps: int, batch_pairs: int, train_pairs: int,
                  test_pairs: int, trials: int, mean_tokens: int, calibrate: bool, seed: int, lr: float,
                  k_coef: float, clean: bool = False, progress: bool = False) -> dict:
    """Prune `run`'s model for `task` at each target loss (mean ablation).

    Returns {task, full_loss, n_nodes_total, seconds, targets: [...]} with one entry per target:
    {target, status: "ok", nodes, edges, loss, trial, kept} or {target, status: "unreachable"} when the
    unpruned model's loss on the evaluation pairs (calibrated, if asked) is above the target. Raises
    TaskError when the task cannot be posed with the tokenizer.
    """
    from ..prune import SearchSettings, prune_targets as prune
    t0 = time.perf_counter()
    settings = SearchSettings(steps=steps, batch_pairs=batch_pairs, lr=lr, k_coef=k_coef)
    search = prune(run, task, targets, settings=settings, trials=trials, n_train=train_pairs, n_test=test_pairs,
                   mean_tokens=mean_tokens, calibrate=calibrate, seed=seed, clean=clean, progress=progress)
    rows = [{"target": f.target, "status": "ok", "nodes": f.best.nodes, "edges": f.edges, "loss": f.best.loss,
             "trial": f.best_trial, "kept": f.best.kept} if f.best is not None
            else {"target": f.target, "status": "unreachable"} for f in search.targets]
    return {"task": task, "full_loss": float(search.full_loss), "n_nodes_total": search.n_nodes,
            "seconds": round(time.perf_counter() - t0, 2), "targets": rows}


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean of edge counts, as the pruner defines it (an empty circuit counts as 1 edge)."""
    from ..prune.edges import geometric_mean as gm
    return gm(values)
