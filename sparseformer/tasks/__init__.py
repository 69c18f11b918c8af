"""The Python task suite: 20 binary next-token tasks (docs/tasks.md), custom tasks, the contrast loss.

    from sparseformer.tasks import get_task, make_batch, task_loss, evaluate
    batch = make_batch(get_task("single_double_quote"), tokenizer, split="train", n=64)
    loss = task_loss(model, batch)                 # differentiable, mean per sequence
    rows = evaluate(model, tokenizer, "all")       # [{task, kind, loss, accuracy, n, n_dropped}, ...]

Add a task with `@register_task("name", description=...)` on a `fn(rng) -> Pair`, or load pairs from a
JSONL file with `load_jsonl_task(path)` (or pass the path wherever a task name is accepted).
"""

from .dataset import (MAX_LEN, PAD_ID, TaskBatch, encode_pairs, first_token, make_batch, make_split, max_prompt_len,
                      split_of)
from .evaluate import evaluate, evaluate_batch, task_logits, task_loss
from .jsonl import load_jsonl_task, write_jsonl
from .loss import contrast_accuracy, contrast_correct, contrast_loss, contrast_losses
from .registry import (BUILTIN_TASKS, get_task, list_tasks, register_task, resolve_task, resolve_tasks,
                       unregister_task)
from .task import Pair, Task

__all__ = [
    "BUILTIN_TASKS", "MAX_LEN", "PAD_ID", "Pair", "Task", "TaskBatch", "contrast_accuracy", "contrast_correct",
    "contrast_loss", "contrast_losses", "encode_pairs", "evaluate", "evaluate_batch", "first_token", "get_task",
    "list_tasks", "load_jsonl_task", "make_batch", "make_split", "max_prompt_len", "register_task", "resolve_task",
    "resolve_tasks", "split_of",
    "task_logits", "task_loss", "unregister_task", "write_jsonl",
]
