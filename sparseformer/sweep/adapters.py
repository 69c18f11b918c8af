"""The one place the sweep calls the task suite and the pruner; everything else in sweep/ sees plain dicts.

Evaluation is `sparseformer.tasks.evaluate`. Pruning composes `sparseformer.prune`'s search pieces
rather than calling `prune.circuit.prune_task`, because a sweep prunes every (model, task) at several
target losses: `prune_task` handles one target per call and also validates the circuit and collects
viewer snippets, so three targets would cost three mask trainings plus validation. Here the masks are
trained once per trial and the bisection (SPEC §5.4) is run at each target on the same node ranking;
the bisection is what makes a circuit hit its target. When the pruner gains a multi-target entry point,
`prune_targets` is the function to switch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

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


@torch.no_grad()
def count_edges(model, kept: dict[str, Sequence[int]]) -> int:
    """Headline edge count (SPEC §5.1): nonzero weights between kept nodes, over every edge matrix."""
    from ..prune.edges import edge_matrices
    total = 0
    for src, tgt, w, _bias in edge_matrices(model):
        src_ch, tgt_ch = sorted(kept.get(src, ())), sorted(kept.get(tgt, ()))
        if src_ch and tgt_ch:
            total += int(torch.count_nonzero(w[tgt_ch][:, src_ch]))
    return total


def prune_targets(run, task: str, targets: Sequence[float], *, steps: int, batch_pairs: int, train_pairs: int,
                  test_pairs: int, trials: int, mean_tokens: int, calibrate: bool, seed: int, lr: float,
                  k_coef: float, progress: bool = False) -> dict:
    """Prune `run`'s model for `task` at each target loss (mean ablation, SPEC §5).

    Returns {task, full_loss, n_nodes_total, seconds, targets: [...]} with one entry per target:
    {target, status: "ok", nodes, edges, loss, trial, kept} or {target, status: "unreachable"} when the
    unpruned model's loss on the evaluation pairs (calibrated, if asked) is above the target; no masks are
    trained when no target is reachable. Raises TaskError when the task cannot be posed with the tokenizer.
    """
    from ..prune.ablate import Ablator, frozen_params
    from ..prune.means import run_means
    from ..prune.search import (SearchSettings, bisect_nodes, calibrate as fit_calibration, circuit_loss_fn,
                                rank_nodes, train_masks, trial_settings)
    from ..prune.sites import kept_from_flat, mask_sites, n_nodes
    from ..prune.taskdata import MAX_PROMPT_TOKENS, load_task, task_batches

    t0 = time.perf_counter()
    train, test = task_batches(load_task(task), run.tokenizer, n_train=train_pairs, n_test=test_pairs, seed=seed,
                               max_len=min(MAX_PROMPT_TOKENS, run.config.model.block_size))
    sites = mask_sites(run.config.model)
    total = n_nodes(sites)
    ablator = Ablator(run.model, run_means(run, n_tokens=mean_tokens))
    base = SearchSettings(steps=steps, batch_pairs=batch_pairs, lr=lr, k_coef=k_coef)
    best: dict[float, dict] = {}
    with frozen_params(run.model):
        z, b = ablator.eval_logits(test, None)
        full_loss = fit_calibration(z, b)[2] if calibrate else ablator.eval_loss(test, None)
        reachable = [t for t in targets if full_loss <= t]
        for trial in range(trials if reachable else 0):
            settings = trial_settings(base, trial, seed)
            tau, _history = train_masks(ablator, sites, train, settings, seed=seed + trial, progress=progress)
            ranking = rank_nodes(tau)
            loss_at = circuit_loss_fn(ablator, sites, test, ranking, calibrate)
            for target in reachable:
                k = bisect_nodes(loss_at, total, target)
                kept = kept_from_flat(ranking[:k].tolist(), sites)
                entry = {"target": target, "status": "ok", "nodes": k, "edges": count_edges(run.model, kept),
                         "loss": loss_at(k)[0], "trial": trial, "kept": kept}
                old = best.get(target)
                if old is None or (entry["edges"], entry["nodes"]) < (old["edges"], old["nodes"]):
                    best[target] = entry
    rows = [best.get(t, {"target": t, "status": "unreachable"}) for t in targets]
    return {"task": task, "full_loss": float(full_loss), "n_nodes_total": total,
            "seconds": round(time.perf_counter() - t0, 2), "targets": rows}


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean of edge counts, as the pruner defines it (an empty circuit counts as 1 edge)."""
    from ..prune.edges import geometric_mean as gm
    return gm(values)
