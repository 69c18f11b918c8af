"""Deterministic train/test pairs and their token tensors.

Splits: a pair's split is a fixed function of its text (a hash), so train and test never share a pair,
whatever the seed or n. `make_split` draws from the task's generator with a seeded RNG, keeps the pairs
that fall in the asked split, and drops repeats.

Tokens (`encode_pairs`): each prompt gets `<|endoftext|>` in front (the model saw every document start
after one), is left-truncated to 255 tokens (SPEC §4.1), and right-padded with id 0 (attention is
causal, so padding on the right never changes the logits at a real position). A target is scored by
the first token of its encoding. A pair is dropped, and counted, when
  - its two targets begin with the same token (binary tasks cannot score it), or
  - the target merges with the end of the prompt, i.e. encode(prompt + target) does not start with
    encode(prompt) followed by the target's first token (the model would never see that boundary).
The built-in generators end every prompt where a pre-token ends, so they lose no pairs under a
tokenizer built with the SPEC §3.1 regex. If more than half of a task's pairs are dropped the tokenizer
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
from .registry import Pair, Task

log = logging.getLogger(__name__)

MAX_LEN = 255  # SPEC §4.1: left_truncate_to_len(n=255)
PAD_ID = 0     # SPEC §3.1: right-padding value
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
    """Token tensors for the pairs of one task (all int64; N pairs).

    tokens_a [N, Ta] / tokens_b [N, Tb]: right-padded with PAD_ID; lengths_a/_b [N]: real lengths, so
    each prompt's prediction is read at position length - 1. target_a/_b [N]: token ids to score.
    """

    task: str
    kind: str
    tokens_a: Tensor
    lengths_a: Tensor
    tokens_b: Tensor
    lengths_b: Tensor
    target_a: Tensor
    target_b: Tensor
    pairs: tuple[Pair, ...]
    n_dropped: int = 0

    def __len__(self) -> int:
        return self.target_a.shape[0]

    def to(self, device) -> TaskBatch:
        """The same batch with every tensor on `device`."""
        return replace(self, **{f: getattr(self, f).to(device) for f in _TENSOR_FIELDS})

    def select(self, index: Sequence[int] | Tensor | slice) -> TaskBatch:
        """The pairs at `index`, with padding trimmed to the longest selected prompt."""
        if isinstance(index, slice):
            index = range(len(self))[index]
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index, dtype=torch.long)
        la, lb = self.lengths_a[idx.to(self.lengths_a.device)], self.lengths_b[idx.to(self.lengths_b.device)]
        ta = int(la.max()) if len(idx) else 0
        tb = int(lb.max()) if len(idx) else 0
        i = idx.to(self.tokens_a.device)
        return replace(self, tokens_a=self.tokens_a[i, :ta], lengths_a=la, tokens_b=self.tokens_b[i, :tb],
                       lengths_b=lb, target_a=self.target_a[i], target_b=self.target_b[i],
                       pairs=tuple(self.pairs[j] for j in idx.tolist()))

    def batches(self, batch_size: int) -> Iterator[TaskBatch]:
        """Consecutive sub-batches of at most batch_size pairs."""
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))


_TENSOR_FIELDS = ("tokens_a", "lengths_a", "tokens_b", "lengths_b", "target_a", "target_b")


def first_token(tokenizer, text: str) -> int:
    """The token a target is scored by: the first token of its encoding."""
    ids = tokenizer.encode(text)
    if not ids:
        raise TaskError(f"target {text!r} encodes to no tokens; targets need text")
    return ids[0]


def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), int(lengths.max()) if rows else 0), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


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
                f"use a tokenizer that keeps them apart (SPEC §3.1 regex, e.g. '\")' and \"')\" as tokens)")
        prompt, target = merge[0]
        raise TaskError(
            f"task '{task}': in {len(merge)} of {len(pairs)} pairs the target merges with the end of the prompt "
            f"under this tokenizer (e.g. ...{prompt[-20:]!r} + {target!r}); end each prompt where a token ends")
    if dropped:
        log.warning("task %s: dropped %d of %d pairs (%d with targets sharing a first token, %d with a target "
                    "that merges into the prompt)", task, dropped, len(pairs), len(collide), len(merge))
    tokens_a, lengths_a = _pad(rows_a)
    tokens_b, lengths_b = _pad(rows_b)
    return TaskBatch(task=task, kind=kind, tokens_a=tokens_a, lengths_a=lengths_a, tokens_b=tokens_b,
                     lengths_b=lengths_b, target_a=torch.tensor(tgt_a, dtype=torch.long),
                     target_b=torch.tensor(tgt_b, dtype=torch.long), pairs=tuple(kept), n_dropped=dropped)


def make_batch(task: Task, tokenizer, split: str = "test", n: int = 512, seed: int = 0, **kwargs) -> TaskBatch:
    """make_split + encode_pairs: the token tensors of n pairs of `task`."""
    return encode_pairs(make_split(task, split, n, seed), tokenizer, task=task.name, kind=task.kind, **kwargs)
