"""Validation of a circuit (docs/pruning.md): sufficiency, necessity, a random control, per-node ablations.

- sufficiency: the circuit alone (every other node ablated) reaches the target loss;
- necessity ("inverse pruning"): only the circuit's nodes ablated, everything else intact;
- random control: random circuits with the same number of nodes *at each site*, alone;
- ablated: every node ablated (the loss with no circuit at all);
- per node: the circuit with that one node ablated as well (how much the circuit needs it).
All losses are per-sequence contrast losses on the evaluation pairs, with the circuit's calibration; the
per-node losses (one forward pass per node) use `node_pairs` of them, evenly spaced, for at most
`max_node_ablations` nodes (in forward order); the other nodes get None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .ablate import Ablator
from .sites import flat_from_kept, node_ids, split_flat
from ..tasks.dataset import TaskBatch


@dataclass
class Validation:
    loss: float                       # circuit alone
    necessity_loss: float             # circuit ablated, rest intact
    random_loss: float                # mean over random_losses
    random_losses: list[float]
    ablated_loss: float               # everything ablated
    node_losses: dict[str, float] = field(default_factory=dict)   # circuit minus one node (node_pairs pairs)


def random_circuit(kept: dict[str, Sequence[int]], sites: dict[str, int], gen: torch.Generator, *,
                   disjoint: bool = False) -> dict[str, list[int]]:
    """Same number of nodes per site as `kept`, channels drawn uniformly (with `disjoint`, from the channels
    `kept` does not hold, where a site has enough of them)."""
    out = {}
    for s, c in kept.items():
        if not c:
            continue
        pool = torch.randperm(sites[s], generator=gen)
        if disjoint and sites[s] - len(c) >= len(c):
            pool = pool[~torch.isin(pool, torch.as_tensor(list(c)))]
        out[s] = sorted(pool[:len(c)].tolist())
    return out


def validate(ablator: Ablator, sites: dict[str, int], kept: dict[str, Sequence[int]], batch: TaskBatch, *,
             scale: float = 1.0, shift: float = 0.0, n_random: int = 3, max_node_ablations: int = 64,
             node_pairs: int = 16, seed: int = 0, node_losses: dict[str, float] | None = None) -> Validation:
    """Run all the checks above on `batch`; `node_losses` (from the cleaning pass, on all of `batch`) are
    taken as they are instead of being measured again."""
    keep_flat = flat_from_kept(kept, sites).float()

    def loss(flat: torch.Tensor, on: TaskBatch = batch) -> float:
        return ablator.eval_loss(on, split_flat(flat, sites), scale, shift)

    few = batch.select(torch.linspace(0, batch.n_pairs - 1, min(node_pairs, batch.n_pairs)).round().long().unique())

    gen = torch.Generator().manual_seed(seed)
    randoms = [loss(flat_from_kept(random_circuit(kept, sites, gen), sites).float()) for _ in range(n_random)]
    nodes: dict[str, float] = dict(node_losses or {})
    ids = node_ids(kept, sites)
    for i, flat_idx in enumerate(keep_flat.nonzero()[:, 0].tolist()[:max_node_ablations]):
        if ids[i] in nodes:
            continue
        flat = keep_flat.clone()
        flat[flat_idx] = 0.0
        nodes[ids[i]] = loss(flat, few)
    return Validation(loss=loss(keep_flat), necessity_loss=loss(1.0 - keep_flat),
                      random_loss=sum(randoms) / len(randoms) if randoms else float("nan"),
                      random_losses=randoms, ablated_loss=loss(torch.zeros_like(keep_flat)), node_losses=nodes)

