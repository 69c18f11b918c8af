"""The measurements behind the faithfulness controls (faithfulness.py, docs/pruning.md).

- random_draws: random circuits with the circuit's number of nodes at each site, alone and ablated;
- resample_values: resample ablation, where a pruned node takes its value from another prompt of the task;
- attention_agreement: how far a kept head's attention moves when only the circuit is kept;
- random_init_like: the same architecture and sparsity pattern with random weights;
- nonsense_batch: the task's prompts with their targets replaced by arbitrary tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..hooks import record
from ..layers import refresh
from ..tasks.dataset import TaskBatch
from .ablate import Ablator
from .sites import flat_from_kept, split_flat
from .validate import random_circuit


@torch.no_grad()
def random_draws(ablator: Ablator, sites: dict[str, int], kept: dict[str, Sequence[int]], batch: TaskBatch, *,
                 n: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0) -> tuple[list[float], list[float]]:
    """Losses of n random circuits of the circuit's size per site, kept alone, and of n random node sets of
    that size outside the circuit, ablated from the model: (alone, ablated)."""
    gen = torch.Generator().manual_seed(seed)
    alone, ablated = [], []
    for _ in range(n):
        flat = flat_from_kept(random_circuit(kept, sites, gen), sites).float()
        alone.append(ablator.eval_loss(batch, split_flat(flat, sites), scale, shift))
        other = flat_from_kept(random_circuit(kept, sites, gen, disjoint=True), sites).float()
        ablated.append(ablator.eval_loss(batch, split_flat(1 - other, sites), scale, shift))
    return alone, ablated


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    perm = torch.randperm(n, generator=gen)
    for i in range(n):
        if n > 1 and perm[i] == i:                       # swap a fixed point with its neighbour
            j = (i + 1) % n
            perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def resample_values(model: nn.Module, sites: dict[str, int], means: dict[str, Tensor],
                    seed: int = 0) -> Callable[[TaskBatch], dict[str, Tensor]]:
    """Ablation values for resample ablation: every row of a batch takes the activations of another row
    (a random derangement of the 2P prompts, so about half the donors come from the other side of the
    task), aligned at the last position so the predicting positions match. Positions before the donor's
    first token take the node's mean."""
    def values(batch: TaskBatch) -> dict[str, Tensor]:
        rows = batch.idx.shape[0]
        perm = _derangement(rows, torch.Generator().manual_seed(seed + rows)).to(batch.idx.device)
        with torch.no_grad(), record(model, list(sites)) as rec:
            model(batch.idx)
        T = batch.idx.shape[1]
        src = torch.arange(T, device=batch.idx.device)[None] - batch.last[:, None] + batch.last[perm][:, None]
        valid = (src >= 0)[..., None]
        src = src.clamp(0, T - 1)[..., None]
        out = {}
        for s in sites:
            donor = rec[s][perm].float()                 # [2P, T, width]
            aligned = donor.gather(1, src.expand(-1, -1, donor.shape[-1]))
            out[s] = torch.where(valid, aligned, means[s].to(aligned.device, aligned.dtype))
        return out
    return values


def kept_heads(kept: dict[str, Sequence[int]], d_head: int) -> list[tuple[int, int]]:
    """(layer, head) of every head with a kept q, k or v channel."""
    heads = set()
    for site, chans in kept.items():
        layer, _, rest = site.partition(".")
        if rest in ("attn.q", "attn.k", "attn.v"):
            heads |= {(int(layer), c // d_head) for c in chans}
    return sorted(heads)


def _last_attention(q: Tensor, k: Tensor, last: Tensor, head: int, d_head: int, sink: Tensor | None) -> Tensor:
    """Attention of each row's last position over its context (plus the sink slot when there is one)."""
    rows = torch.arange(q.shape[0], device=q.device)
    sl = slice(head * d_head, (head + 1) * d_head)
    qh = q[rows, last][:, sl].float()                                         # [R, d_head]
    scores = (k[..., sl].float() @ qh[..., None])[..., 0] / math.sqrt(d_head)  # [R, T]
    T = scores.shape[1]
    scores = scores.masked_fill(torch.arange(T, device=q.device)[None] > last[:, None], float("-inf"))
    if sink is not None:
        scores = torch.cat([scores, sink[head].float().expand(scores.shape[0], 1)], dim=1)
    return scores.softmax(dim=1)


@torch.no_grad()
def attention_agreement(ablator: Ablator, sites: dict[str, int], kept: dict[str, Sequence[int]],
                        batch: TaskBatch) -> list[dict]:
    """Per kept head: the mean total-variation distance between its last-position attention in the full
    model and in the circuit, and the mean entropy of each (nats), over the prompts of `batch`."""
    model = ablator.model
    d_head = model.config.d_head
    heads = kept_heads(kept, d_head)
    if not heads:
        return []
    names = sorted({f"{L}.attn.{s}" for L, _ in heads for s in "qk"})
    keep = split_flat(flat_from_kept(kept, sites).float(), sites)
    stats = {h: {"tv": [], "entropy_full": [], "entropy_circuit": []} for h in heads}
    for chunk in batch.batches(ablator.eval_pairs):
        chunk = chunk.to(ablator.device)
        full, circ = dict.fromkeys(names), dict.fromkeys(names)
        ablator.logits(chunk, None, watch=full)
        ablator.logits(chunk, keep, watch=circ)
        for L, h in heads:
            sink = model.transformer.h[L].attn.sink_logit
            p = _last_attention(full[f"{L}.attn.q"], full[f"{L}.attn.k"], chunk.last, h, d_head, sink)
            c = _last_attention(circ[f"{L}.attn.q"], circ[f"{L}.attn.k"], chunk.last, h, d_head, sink)
            ent = lambda a: -(a * a.clamp_min(1e-12).log()).sum(1)
            stats[(L, h)]["tv"].append(0.5 * (p - c).abs().sum(1))
            stats[(L, h)]["entropy_full"].append(ent(p))
            stats[(L, h)]["entropy_circuit"].append(ent(c))
    return [{"head": f"{L}.attn.h{h}", **{k: round(float(torch.cat(v).mean()), 4) for k, v in stats[(L, h)].items()}}
            for L, h in heads]


@torch.no_grad()
def random_init_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with freshly initialised weights (the model's own init, seeded), keeping its
    sparsity pattern: every entry that is zero in the trained model is zero in the copy."""
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin.reset_parameters()
        if getattr(twin, "bigram_table", None) is not None:
            twin.bigram_table.copy_(torch.rand_like(twin.bigram_table) * 0.02)   # the table's own init
    for p, q in zip(model.parameters(), twin.parameters()):
        if bool((p == 0).any()):
            q.mul_((p != 0).to(q.dtype))
    refresh(twin)
    return twin


def nonsense_batch(batch: TaskBatch, token_a: int, token_b: int) -> TaskBatch:
    """The same prompts with arbitrary targets: every A prompt must predict token_a and every B prompt
    token_b, over the whole vocabulary (a fixed pair under the binary loss would be solved by a constant)."""
    n = len(batch)
    return dataclasses.replace(batch, target_a=torch.full((n,), token_a, dtype=torch.long),
                               target_b=torch.full((n,), token_b, dtype=torch.long), kind="cross_entropy",
                               task=f"{batch.task}:nonsense")
