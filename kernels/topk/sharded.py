"""Exact top-k projection of tensors sharded across ranks along their first dimension (FSDP2's Shard(0)).

Every rank calls `project_topk_sharded_` with its local shards at the same time, with the same ks, global
shapes and protection rules. The kept set is exactly what a single process keeps on the gathered tensor
(reference.py's rules, ties to the lowest flat index of the whole tensor, +-column protection included).
The collectives are callables in `Comm` (this package never imports torch.distributed); per call the
projection makes one all-reduce per selection pass for all tensors together, one all-gather for column
protection (only when a column-protected tensor is present) and one small all-gather of tie counts (only
when a tie group straddles what the ranks hold). `CommStats` reports every collective and its bytes.
docs/kernels.md explains the algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..dispatch import resolve
from .backends import kernel_set
from .phases import Projection, Target, TopkState, run
from .ranks import Shard
from .reference import protect_view


@dataclass
class Comm:
    """The collectives of one process group, as callables.

    `all_reduce(t)` sums the int64 tensor t over every rank, in place (torch.distributed.all_reduce).
    `all_gather(t)` returns [world_size, *t.shape]: every rank's t in rank order; when None, it is made from
    `all_reduce` (each rank writes its row of a zero tensor, then the sum), at world_size times the bytes.
    """

    rank: int
    world_size: int
    all_reduce: Callable[[Tensor], None]
    all_gather: Callable[[Tensor], Tensor] | None = None


@dataclass
class CommStats:
    """The collectives one projection made: (kind, what, payload bytes this rank sent) each, in order."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def count(self, kind: str | None = None) -> int:
        """How many calls of `kind` ("all_reduce" or "all_gather"; None: any) were made."""
        return sum(1 for k, _, _ in self.calls if kind in (None, k))

    def bytes(self, kind: str | None = None) -> int:
        """The payload bytes this rank sent in calls of `kind` (None: all calls)."""
        return sum(b for k, _, b in self.calls if kind in (None, k))


def counted(comm: Comm, stats: CommStats):
    """The reduce and gather callables of `run`, recording each call in `stats`."""
    passes = [0]

    def reduce(t: Tensor) -> None:
        passes[0] += 1
        stats.calls.append(("all_reduce", f"histograms, pass {passes[0]}", t.numel() * t.element_size()))
        comm.all_reduce(t)

    def gather(t: Tensor) -> Tensor:
        what = "tie counts" if passes[0] else "column protection"
        if comm.all_gather is not None:
            stats.calls.append(("all_gather", what, t.numel() * t.element_size()))
            return comm.all_gather(t)
        buf = torch.zeros(comm.world_size, t.numel(), dtype=t.dtype, device=t.device)
        buf[comm.rank] = t
        stats.calls.append(("all_reduce", f"{what} (as a gather)", buf.numel() * buf.element_size()))
        comm.all_reduce(buf)
        return buf

    return reduce, gather


def shard_targets(shards, ks, global_shapes, offsets, protect=None, names=None, decay=None
                  ) -> tuple[list[Target], list[int]]:
    """The Target of each local shard (padding rows cut off) and the number of valid local rows."""
    n = len(shards)
    if not n == len(ks) == len(global_shapes) == len(offsets):
        raise ValueError(f"project_topk_sharded_: {n} shards, {len(ks)} ks, {len(global_shapes)} global shapes, "
                         f"{len(offsets)} offsets")
    one_rule = protect is None or (isinstance(protect, tuple) and len(protect) == 2 and isinstance(protect[0], int))
    rules = [protect] * n if one_rule else list(protect)
    if len(rules) != n:
        raise ValueError(f"project_topk_sharded_: {len(rules)} protection rules for {n} shards")
    labels = list(names) if names is not None else [f"tensors[{i}]" for i in range(n)]
    decays = [decay] * n if decay is None or isinstance(decay, (int, float)) else list(decay)
    targets, valid = [], []
    for w, k, shape, off, rule, name, d in zip(shards, ks, global_shapes, offsets, rules, labels, decays):
        shape = tuple(int(s) for s in shape)
        if w.ndim == 0 or len(shape) != w.ndim or tuple(w.shape[1:]) != shape[1:] or not 0 <= off:
            raise ValueError(f"project_topk_sharded_: shard {name!r} {tuple(w.shape)} at row {off} does not fit "
                             f"the global shape {shape}")
        here = max(0, min(w.shape[0], shape[0] - off))       # rows past the global end are padding
        part = w[:here]
        view, j = protect_view(part, rule)
        transposed = bool(rule) and rule[1] == "cols"
        targets.append(Target(view, int(k), j, name, 1.0 if d is None else float(d),
                              Shard(int(off), shape[0], math.prod(shape), transposed)))
        valid.append(here)
    return targets, valid


def _project(shards, ks, global_shapes, offsets, comm, protect, names, backend, state, decay, mask_mode):
    shards = list(shards)
    stats = CommStats()
    targets, valid = shard_targets(shards, ks, global_shapes, offsets, protect, names, decay)
    if not targets:
        return stats, []
    chosen = resolve("project_topk_sharded_", shards[0].device, backend)
    reduce, gather = counted(comm, stats)
    masks = run(Projection(targets, kernel_set(chosen), state=state, mask_mode=mask_mode, rank=comm.rank),
                reduce, gather)
    if not mask_mode:
        return stats, []
    out = []
    for w, t, here, m in zip(shards, targets, valid, masks):
        full = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        full[:here] = m.t() if t.shard.transposed else m
        out.append(full)
    return stats, out


def project_topk_sharded_(shards: Sequence[Tensor], ks: Sequence[int], global_shapes: Sequence[Sequence[int]],
                          offsets: Sequence[int], comm: Comm, *, protect=None, names=None,
                          backend: str | None = None, state: TopkState | None = None, decay=None) -> CommStats:
    """In place, on this rank's shards: keep exactly ks[i] largest-|w| entries of each whole tensor.

    shards[i]: this rank's rows of tensor i, starting at global row offsets[i] of global_shapes[i] (dim-0
    sharding; rows past the global end, FSDP's padding, are left alone; a rank may hold no rows).
    `protect`: None, one (j, "rows" | "cols") rule for all, or one rule or None per tensor (reference.py).
    `state`: a TopkState kept across steps warm-starts every tensor from its previous threshold.
    `decay`: None, or one factor or a factor per tensor by which survivors are multiplied (weight decay).
    Returns the collectives made.
    """
    return _project(shards, ks, global_shapes, offsets, comm, protect, names, backend, state, decay, False)[0]


def topk_masks_sharded(shards: Sequence[Tensor], ks: Sequence[int], global_shapes: Sequence[Sequence[int]],
                       offsets: Sequence[int], comm: Comm, *, protect=None, names=None, backend: str | None = None,
                       state: TopkState | None = None) -> tuple[list[Tensor], CommStats]:
    """`project_topk_sharded_` without changing the shards: the bool mask of the survivors per shard (False
    on padding rows) and the collectives made."""
    stats, masks = _project(shards, ks, global_shapes, offsets, comm, protect, names, backend, state, None, True)
    return masks, stats
