"""Cleaning a circuit: drop nodes while it still reaches the target, until every node it keeps is needed.

The bisection keeps the k top-ranked nodes, so a node the ranking placed too high stays in the circuit, and a
single late node that the task needs drags every node ranked above it in with it (docs/pruning.md). The
cleaning pass tries to remove each kept node in turn and commits every removal after which the circuit's loss
on the evaluation pairs is still at or below the target. The search chooses the order: lowest-ranked first,
or most edges first, which spends the slack below the target on the nodes that cost the most edges. Passes
repeat until one removes nothing; that last pass has then tried every remaining node against the final
circuit, so each of them is necessary: removing any single one pushes the loss over the target. Its losses
are the per-node ablation losses the viewer shows. The cost is one evaluation of the circuit per kept node
per pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Cleaning:
    """The cleaned circuit (a flat 0/1 keep vector) and what it took."""
    keep: Tensor
    loss: float
    scale: float = 1.0
    shift: float = 0.0
    removed: list[int] = field(default_factory=list)       # flat node indices, in the order they went
    node_losses: dict[int, float] = field(default_factory=dict)   # kept node -> loss without it (last pass)
    evals: int = 0
    passes: int = 0
    seconds: float = 0.0


def clean_circuit(loss_of: Callable[[Tensor], tuple[float, float, float]], keep: Tensor,
                  order: Sequence[int] | Callable[[Tensor], Sequence[int]], target: float,
                  max_passes: int = 20) -> Cleaning:
    """Remove nodes of the circuit `keep` (flat 0/1) while loss_of(circuit)[0] <= target; candidates are
    tried in `order` (flat indices; kept nodes not in it are never removed), or in order(keep) recomputed at
    the start of every pass. Returns the cleaned circuit; a circuit that does not reach the target comes
    back unchanged."""
    t0 = time.perf_counter()
    keep = keep.clone().float()
    loss, a, b = loss_of(keep)
    out = Cleaning(keep=keep, loss=loss, scale=a, shift=b, evals=1)
    if not loss <= target:
        out.seconds = time.perf_counter() - t0
        return out
    candidates = [] if callable(order) else [int(i) for i in order if keep[int(i)] > 0]
    for _ in range(max_passes):
        if callable(order):
            candidates = [int(i) for i in order(keep) if keep[int(i)] > 0]
        out.passes += 1
        removed_now = 0
        out.node_losses = {}
        for i in candidates:
            if keep[i] == 0:
                continue
            trial = keep.clone()
            trial[i] = 0.0
            t_loss, t_a, t_b = loss_of(trial)
            out.evals += 1
            if t_loss <= target:
                keep, loss, a, b = trial, t_loss, t_a, t_b
                out.removed.append(i)
                removed_now += 1
            else:
                out.node_losses[i] = t_loss
        if removed_now == 0:
            break
        candidates = [i for i in candidates if keep[i] > 0]
    out.keep, out.loss, out.scale, out.shift = keep, loss, a, b
    out.node_losses = {i: v for i, v in out.node_losses.items() if keep[i] > 0}
    out.seconds = time.perf_counter() - t0
    return out
