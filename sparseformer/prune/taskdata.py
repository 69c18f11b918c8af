"""The one place pruning talks to the task suite: pairs -> token batches, and the contrast loss.

A `TaskBatch` holds the sequences of P pairs: rows [0, P) are the A prompts and rows [P, 2P) their B
twins, right-padded, with each row's last real position. `contrast_loss` is the SPEC §4.1 loss read from
last-position logits, averaged per sequence (so the default target 0.15 is per sequence, SPEC §10 item 1),
with the optional logit calibration of SPEC §5.4 applied first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TaskError

MAX_PROMPT_TOKENS = 255     # SPEC §4.1: left-truncate to <= 255 tokens


@dataclass
class TaskBatch:
    """P pairs as 2P sequences: A prompts first, then their B twins in the same order."""
    idx: Tensor       # [2P, T] int64, right-padded with 0
    last: Tensor      # [2P] position of each row's last real token
    tok: Tensor       # [2P] target A of the row's pair
    alt: Tensor       # [2P] target B of the row's pair (full_vocab tasks: only an example, unused)
    kind: str = "binary"

    @property
    def n_pairs(self) -> int:
        return self.idx.shape[0] // 2

    def to(self, device) -> TaskBatch:
        return replace(self, idx=self.idx.to(device), last=self.last.to(device), tok=self.tok.to(device),
                       alt=self.alt.to(device))

    def select(self, pairs: Tensor) -> TaskBatch:
        """The sub-batch of the given pair indices (both sides), trimmed to its longest row."""
        pairs = pairs.to(self.idx.device)
        rows = torch.cat([pairs, pairs + self.n_pairs])
        last = self.last[rows]
        T = int(last.max()) + 1
        return replace(self, idx=self.idx[rows, :T], last=last, tok=self.tok[rows], alt=self.alt[rows])

    def pair_lengths(self) -> Tensor:
        """[P] the longer prompt of each pair, in tokens."""
        return (self.last + 1).view(2, -1).max(0).values

    def sorted_by_length(self) -> TaskBatch:
        """The same pairs, shortest first, so chunks pad little (every loss here is a mean over pairs)."""
        return self.select(torch.sort(self.pair_lengths(), stable=True).indices)

    def chunks(self, max_pairs: int) -> Iterator[TaskBatch]:
        for start in range(0, self.n_pairs, max_pairs):
            yield self.select(torch.arange(start, min(start + max_pairs, self.n_pairs)))

    def prompt_tokens(self) -> list[int]:
        """Distinct token ids that occur in the prompts."""
        mask = torch.arange(self.idx.shape[1], device=self.idx.device)[None] <= self.last[:, None]
        return sorted(int(t) for t in self.idx[mask].unique())

    @classmethod
    def from_token_pairs(cls, pairs: Sequence[tuple[Sequence[int], int, Sequence[int], int]],
                         kind: str = "binary", max_len: int = MAX_PROMPT_TOKENS) -> TaskBatch:
        """Build from (ids_a, target_a, ids_b, target_b) tuples; prompts are left-truncated to max_len."""
        if not pairs:
            raise TaskError("no pairs to build a batch from")
        rows = [list(p[0])[-max_len:] for p in pairs] + [list(p[2])[-max_len:] for p in pairs]
        if any(len(r) == 0 for r in rows):
            raise TaskError("a task prompt encodes to zero tokens; every prompt needs text")
        T = max(len(r) for r in rows)
        idx = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        tok = torch.tensor([p[1] for p in pairs] * 2, dtype=torch.long)
        alt = torch.tensor([p[3] for p in pairs] * 2, dtype=torch.long)
        last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        return cls(idx=idx, last=last, tok=tok, alt=alt, kind=kind)


def contrast_loss(logits: Tensor, batch: TaskBatch, scale: Tensor | float = 1.0,
                  shift: Tensor | float = 0.0) -> Tensor:
    """The task suite's per-sequence contrast loss (SPEC §4.1) from last-position logits [2P, V].

    Calibration (SPEC §5.4) first maps z -> scale * z and adds `shift` to the target-A logit. A shift of
    every logit alike would cancel in the softmax, so the shift moves target A against the rest.
    """
    from ..tasks.loss import contrast_loss as suite_loss
    z = logits.float() * scale
    if torch.is_tensor(shift) or shift != 0:
        z = z + shift * F.one_hot(batch.tok, z.shape[1]).to(z.dtype)
    P = batch.n_pairs
    return suite_loss(z[:P], z[P:], batch.tok[:P], batch.alt[:P], batch.kind)


def load_task(name: str):
    """The task for `name` (a registered name or a .jsonl path); TaskError with suggestions when unknown."""
    from ..tasks import resolve_tasks
    tasks = resolve_tasks(name)
    if len(tasks) != 1:
        raise TaskError(f"prune one task at a time; {name!r} names {len(tasks)}")
    return tasks[0]


def from_suite_batch(tb) -> TaskBatch:
    """Convert the task suite's batch (separate A and B tensors) into A rows then B rows."""
    n = len(tb)
    T = max(tb.tokens_a.shape[1], tb.tokens_b.shape[1])
    idx = torch.zeros(2 * n, T, dtype=torch.long)
    idx[:n, :tb.tokens_a.shape[1]] = tb.tokens_a
    idx[n:, :tb.tokens_b.shape[1]] = tb.tokens_b
    return TaskBatch(idx=idx, last=torch.cat([tb.lengths_a, tb.lengths_b]) - 1,
                     tok=torch.cat([tb.target_a, tb.target_a]), alt=torch.cat([tb.target_b, tb.target_b]),
                     kind=tb.kind)


def task_batches(task, tokenizer, *, n_train: int, n_test: int, seed: int = 0,
                 max_len: int = MAX_PROMPT_TOKENS) -> tuple[TaskBatch, TaskBatch]:
    """Deterministic train and test batches of a task (the suite's splits), tokenised for the run and
    left-truncated to max_len tokens (255, or less for a model with a shorter context)."""
    from ..tasks import make_batch
    if tokenizer is None:
        raise TaskError("the run has no tokenizer.json, so task prompts cannot be tokenised; "
                        "copy the tokenizer the model was trained with into the run directory")
    return tuple(from_suite_batch(make_batch(task, tokenizer, split, n, seed, max_len=max_len))
                 for split, n in (("train", n_train), ("test", n_test)))
