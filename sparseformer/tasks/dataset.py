"""Deterministic train/test pairs and their token tensors.

Splits: a pair's split is a fixed function of its text (a hash), so train and test never share a pair,
whatever the seed or n. `make_split` draws from the task's generator with a seeded RNG, keeps the pairs
that fall in the asked split, and drops repeats.

Tokens (`encode_pairs`): each prompt gets `<|endoftext|>` in front (the model saw every document start
after one), is left-truncated to 255 tokens (docs/tasks.md), and right-padded with id 0 (attention is
causal, so padding on the right never changes the logits at a real position). A target is scored by
the first token of its encoding. A pair is dropped, and counted, when
  - its two targets begin with the same token (binary tasks cannot score it), or
  - the target merges with the end of the prompt, i.e. encode(prompt + target) does not start with
    encode(prompt) followed by the target's first token (the model would never see that boundary).
The built-in generators end every prompt where a pre-token ends, so they lose no pairs under a
tinypython tokenizer. If more than half of a task's pairs are dropped the tokenizer
cannot express the task, and encode_pairs raises TaskError saying why.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..errors import TaskError
from .task import Pair, Task

log = logging.getLogger(__name__)

MAX_LEN = 255  # prompts are cut from the left to this many tokens, as in the paper's task code
PAD_ID = 0     # right-padding value
SPLITS = ("train", "test")


def split_of(pair: Pair) -> str:
    """'train' or 'test': a fixed function of the pair's text (half of all pairs each)."""
    return "test" if hashlib.sha256(pair.key().encode("utf-8")).digest()[0] & 1 else "train"


def make_split(task: Task, split: str = "test", n: int = 512, seed: int = 0) -> list[Pair]:
    """Up to n distinct pairs of `task` in `split`, the same for the same (task, split, n, seed).

    Generator tasks must deliver n pairs (TaskError otherwise). File tasks return their pairs marked
    for this split (or for both), in file order, at most n of them.
    """
    if split not in SPLITS:
        raise TaskError(f"split={split!r}; use 'train' or 'test'")
    if n < 1:
        raise TaskError(f"n={n}: ask for at least one pair")
    if task.pairs is not None:
        marks = task.splits or (None,) * len(task.pairs)
        return [p for p, s in zip(task.pairs, marks) if s in (None, split)][:n]
    rng = random.Random(f"sparseformer.tasks:{task.name}:{seed}")
    seen: set[str] = set()
    out: list[Pair] = []
    tries = 0
    max_tries = 20 * n + 1000
    while len(out) < n:
        if tries >= max_tries:
            raise TaskError(f"task '{task.name}' gave only {len(out)} distinct {split} pairs in {tries} draws "
                            f"(asked for {n}); ask for fewer pairs or make its generator more varied")
        tries += 1
        pair = task.generator(rng)
        key = pair.key()
        if key in seen or split_of(pair) != split:
            continue
        seen.add(key)
        out.append(pair)
    return out


@dataclass(frozen=True)
class TaskBatch:
    """The token rows of N pairs of one task: rows [0, N) are the A prompts, rows [N, 2N) their B twins in the
    same order, right-padded with PAD_ID; each prompt's prediction is read at its row's `last` position.

    The one representation of task data: evaluation, pruning and the sweep all take it."""

    idx: Tensor                     # [2N, T] int64
    last: Tensor                    # [2N] position of each row's last real token
    target_a: Tensor                # [N] the token prompt A must predict
    target_b: Tensor                # [N] the token prompt B must predict (full_vocab: an example, unscored)
    kind: str = "binary"
    task: str = "task"
    pairs: tuple[Pair, ...] = ()    # the text pairs (empty for a batch built from token ids)
    n_dropped: int = 0              # pairs the tokenizer could not express (see encode_pairs)

    def __len__(self) -> int:
        return self.target_a.shape[0]

    @property
    def n_pairs(self) -> int:
        return len(self)

    @property
    def lengths_a(self) -> Tensor:
        return self.last[:len(self)] + 1

    @property
    def lengths_b(self) -> Tensor:
        return self.last[len(self):] + 1

    @property
    def tokens_a(self) -> Tensor:
        """[N, Ta] the A prompts, padded to the longest of them."""
        return self.idx[:len(self), :int(self.lengths_a.max()) if len(self) else 0]

    @property
    def tokens_b(self) -> Tensor:
        return self.idx[len(self):, :int(self.lengths_b.max()) if len(self) else 0]

    def to(self, device) -> TaskBatch:
        """The same batch with every tensor on `device`."""
        return replace(self, idx=self.idx.to(device), last=self.last.to(device),
                       target_a=self.target_a.to(device), target_b=self.target_b.to(device))

    def select(self, index: Sequence[int] | Tensor | slice) -> TaskBatch:
        """The pairs at `index` (both sides), with padding trimmed to the longest selected prompt."""
        if isinstance(index, slice):
            index = range(len(self))[index]
        pairs = torch.as_tensor(index if isinstance(index, Tensor) else list(index), dtype=torch.long)
        pairs = pairs.to(self.idx.device)
        rows = torch.cat([pairs, pairs + len(self)])
        last = self.last[rows]
        T = int(last.max()) + 1 if len(rows) else 0
        return replace(self, idx=self.idx[rows, :T], last=last, target_a=self.target_a[pairs],
                       target_b=self.target_b[pairs],
                       pairs=tuple(self.pairs[j] for j in pairs.tolist()) if self.pairs else ())

    def batches(self, batch_size: int) -> Iterator[TaskBatch]:
        """Consecutive sub-batches of at most batch_size pairs."""
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))

    def pair_lengths(self) -> Tensor:
        """[N] the longer prompt of each pair, in tokens."""
        return (self.last + 1).view(2, -1).max(0).values

    def sorted_by_length(self) -> TaskBatch:
        """The same pairs, shortest first, so consecutive sub-batches pad little."""
        return self.select(torch.sort(self.pair_lengths(), stable=True).indices)

    def prompt_tokens(self) -> list[int]:
        """Distinct token ids that occur in the prompts."""
        mask = torch.arange(self.idx.shape[1], device=self.idx.device)[None] <= self.last[:, None]
        return sorted(int(t) for t in self.idx[mask].unique())

    @classmethod
    def from_token_pairs(cls, pairs: Sequence[tuple[Sequence[int], int, Sequence[int], int]], *,
                         kind: str = "binary", task: str = "task", max_len: int = MAX_LEN) -> TaskBatch:
        """Build from (ids_a, target_a, ids_b, target_b) tuples; prompts are left-truncated to max_len."""
        if not pairs:
            raise TaskError("no pairs to build a batch from")
        rows = [list(p[0])[-max_len:] for p in pairs] + [list(p[2])[-max_len:] for p in pairs]
        if any(len(r) == 0 for r in rows):
            raise TaskError("a task prompt encodes to zero tokens; every prompt needs text")
        return _stack(rows, [p[1] for p in pairs], [p[3] for p in pairs], kind=kind, task=task)


def _stack(rows: list[list[int]], target_a: list[int], target_b: list[int], **fields) -> TaskBatch:
    """A TaskBatch from the A rows followed by the B rows (token id lists)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    idx = torch.full((len(rows), int(lengths.max()) if rows else 0), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return TaskBatch(idx=idx, last=lengths - 1, target_a=torch.tensor(target_a, dtype=torch.long),
                     target_b=torch.tensor(target_b, dtype=torch.long), **fields)


def max_prompt_len(block_size: int | None) -> int:
    """How many tokens of a prompt a model sees: MAX_LEN, or its context when that is shorter."""
    return min(MAX_LEN, block_size) if isinstance(block_size, int) else MAX_LEN


def first_token(tokenizer, text: str) -> int:
    """The token a target is scored by: the first token of its encoding."""
    ids = tokenizer.encode(text)
    if not ids:
        raise TaskError(f"target {text!r} encodes to no tokens; targets need text")
    return ids[0]


def _show(tokenizer, tok: int) -> str:
    try:
        return repr(tokenizer.decode([tok]))
    except Exception:  # a decode failure must not hide the real message
        return "?"


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """encode() of each text; through the tokenizer's encode_batch when it has one (much faster)."""
    batch = getattr(tokenizer, "encode_batch", None)
    return [list(ids) for ids in batch(texts)] if callable(batch) else [tokenizer.encode(t) for t in texts]


def encode_pairs(pairs: Sequence[Pair], tokenizer, *, task: str = "task", kind: str = "binary",
                 max_len: int = MAX_LEN, prepend_eot: bool = True, max_drop_frac: float = 0.5) -> TaskBatch:
    """Tokenise pairs into a TaskBatch (see the module docstring for truncation, padding and drops)."""
    if not pairs:
        raise TaskError(f"task '{task}' has no pairs to encode")
    eot = getattr(tokenizer, "eot_id", None) if prepend_eot else None
    first_cache: dict[str, int] = {}
    sides = [(p.prompt_a, p.target_a) for p in pairs] + [(p.prompt_b, p.target_b) for p in pairs]
    texts = [prompt for prompt, _ in sides] + [prompt + target for prompt, target in sides]
    encoded = iter(_encode_all(tokenizer, texts))
    prompt_ids = dict(zip(sides, [next(encoded) for _ in sides]))
    joined_ids = dict(zip(sides, encoded))
    rows_a, rows_b, tgt_a, tgt_b, kept = [], [], [], [], []
    collide: list[tuple[Pair, int]] = []
    merge: list[tuple[str, str]] = []
    for pair in pairs:
        toks, rows, bad = [], [], None
        for prompt, target in ((pair.prompt_a, pair.target_a), (pair.prompt_b, pair.target_b)):
            if target not in first_cache:
                first_cache[target] = first_token(tokenizer, target)
            tok = first_cache[target]
            ids, joined = prompt_ids[prompt, target], joined_ids[prompt, target]
            if joined[:len(ids)] != ids or len(joined) <= len(ids) or joined[len(ids)] != tok:
                bad = (prompt, target)
            toks.append(tok)
            rows.append(([eot] if eot is not None else []) + ids)
        if bad is not None:
            merge.append(bad)
        elif toks[0] == toks[1]:
            collide.append((pair, toks[0]))
        else:
            rows_a.append(rows[0][-max_len:])
            rows_b.append(rows[1][-max_len:])
            tgt_a.append(toks[0])
            tgt_b.append(toks[1])
            kept.append(pair)
    dropped = len(collide) + len(merge)
    if dropped > max_drop_frac * len(pairs) or not kept:
        if len(collide) >= len(merge):
            pair, tok = collide[0]
            raise TaskError(
                f"task '{task}': targets {pair.target_a!r} and {pair.target_b!r} both begin with token {tok} "
                f"({_show(tokenizer, tok)}) under this tokenizer ({len(collide)} of {len(pairs)} pairs); "
                f"use a tokenizer that keeps them apart (the tinypython pre-tokenizer, e.g. '\")' and \"')\" as tokens)")
        prompt, target = merge[0]
        raise TaskError(
            f"task '{task}': in {len(merge)} of {len(pairs)} pairs the target merges with the end of the prompt "
            f"under this tokenizer (e.g. ...{prompt[-20:]!r} + {target!r}); end each prompt where a token ends")
    if dropped:
        log.warning("task %s: dropped %d of %d pairs (%d with targets sharing a first token, %d with a target "
                    "that merges into the prompt)", task, dropped, len(pairs), len(collide), len(merge))
    return _stack(rows_a + rows_b, tgt_a, tgt_b, kind=kind, task=task, pairs=tuple(kept), n_dropped=dropped)


def make_batch(task: Task, tokenizer, split: str = "test", n: int = 512, seed: int = 0, **kwargs) -> TaskBatch:
    """make_split + encode_pairs: the token tensors of n pairs of `task`."""
    if tokenizer is None:
        raise TaskError("no tokenizer, so task prompts cannot be encoded; a run needs the tokenizer.json its "
                        "model was trained with")
    return encode_pairs(make_split(task, split, n, seed), tokenizer, task=task.name, kind=task.kind, **kwargs)
