"""Run a model on task pairs: last-position logits, the differentiable task loss, and evaluation.

`task_logits` and `task_loss` are plain forwards (no torch.no_grad inside), so pruning can call them in
a training loop with hooks installed. `evaluate` wraps them in no_grad and reports, per task, the mean
per-sequence loss, the accuracy and the number of pairs n (docs/tasks.md; conventions in loss.py).

The model is any callable `model(idx)` with idx int64 [B, T] that returns logits [B, T, V] (a tuple
whose first element is the logits is accepted too). Prompts are right-padded, which is exact for a
causal model: the logits at a real position never see the padding after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .dataset import MAX_LEN, TaskBatch, make_batch, max_prompt_len
from .loss import contrast_correct, contrast_losses
from .registry import Task, resolve_tasks

log = logging.getLogger(__name__)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _forward_logits(model, idx: Tensor) -> Tensor:
    out = model(idx)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor) or out.ndim != 3 or out.shape[:2] != idx.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model(idx) with idx {tuple(idx.shape)} must return logits [B, T, V], got {shape}")
    return out


def task_logits(model, batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """Logits at each prompt's last real position: (logits_a [N, V], logits_b [N, V]).

    A and B prompts go through the model as one right-padded batch of 2N rows.
    """
    device = _device_of(model) if isinstance(model, nn.Module) else batch.idx.device
    batch = batch.to(device)
    logits = _forward_logits(model, batch.idx)                          # [2N, T, V]
    picked = logits[torch.arange(2 * len(batch), device=logits.device), batch.last.to(logits.device)]
    return picked[:len(batch)], picked[len(batch):]


def task_loss(model, batch: TaskBatch) -> Tensor:
    """Mean per-sequence contrast loss of `model` on `batch` (a differentiable scalar)."""
    la, lb = task_logits(model, batch)
    return contrast_losses(la, lb, batch.target_a, batch.target_b, batch.kind).mean()


def evaluate_batch(model, batch: TaskBatch, *, batch_size: int = 32) -> dict:
    """loss (mean per sequence), accuracy (fraction of sequences right) and n (pairs) on one TaskBatch."""
    losses, right = [], []
    with torch.no_grad():
        for sub in batch.sorted_by_length().batches(batch_size):       # similar lengths together: less padding
            la, lb = task_logits(model, sub)
            tok_a, tok_b = sub.target_a.to(la.device), sub.target_b.to(la.device)
            losses.append(contrast_losses(la, lb, tok_a, tok_b, sub.kind).cpu())
            right.append(contrast_correct(la, lb, tok_a, tok_b, sub.kind).cpu())
    loss, ok = torch.cat(losses), torch.cat(right)
    return {"task": batch.task, "kind": batch.kind, "loss": loss.mean().item(),
            "accuracy": ok.float().mean().item(), "n": len(batch), "n_dropped": batch.n_dropped}


def evaluate(model, tokenizer, tasks: str | Task | Iterable[str | Task] | None = "all", *, n: int = 512,
             split: str = "test", seed: int = 0, batch_size: int = 32, max_len: int = MAX_LEN) -> list[dict]:
    """Evaluate `model` on tasks (names, 'all', Task objects or .jsonl paths; see resolve_tasks).

    Returns one dict per task: {task, kind, loss, accuracy, n, n_dropped}; loss is the mean per-sequence
    contrast loss in nats, accuracy the fraction of the 2n sequences whose correct token wins. Prompts
    are left-truncated to max_len tokens (255, docs/tasks.md), and to the model's block_size when that is shorter.
    """
    max_len = min(max_len, max_prompt_len(getattr(getattr(model, "config", None), "block_size", None)))
    results = []
    for task in resolve_tasks(tasks):
        batch = make_batch(task, tokenizer, split=split, n=n, seed=seed, max_len=max_len)
        row = evaluate_batch(model, batch, batch_size=batch_size)
        log.info("task %s: loss %.4f accuracy %.3f n %d", task.name, row["loss"], row["accuracy"], row["n"])
        results.append(row)
    return results
