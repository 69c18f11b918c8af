"""Circuit edges (SPEC §5.1): nonzero weights between kept nodes, and the geometric mean over tasks.

Edge-making matrices, per layer L (weights are [out, in]; rows index the target node, columns the source):
  L.attn.act_in -> L.attn.q / k / v     c_attn.weight rows [0, d_attn) / [d_attn, 2 d_attn) / [2 d_attn, 3 d_attn)
  L.attn.v      -> L.attn.resid_delta   attn.c_proj.weight (head output channel j carries v channel j)
  L.mlp.act_in  -> L.mlp.post_act       c_fc.weight
  L.mlp.post_act-> L.mlp.resid_delta    mlp.c_proj.weight
The headline count is these edges. Bias entries into kept targets are counted separately ("bias edges").
Not edges: q.k pairings, and write -> read links along one residual channel (identity).

Choices where SPEC §10 item 4 leaves it open:
- The read nodes (act_in) sit after the RMSNorm, gain included, so the weights above are the exact edge
  weights; folding the gain into the read weights (W diag(g)) changes the pattern only for a zero gain, whose
  channel is constant anyway.
- Embedding and unembedding entries are reported separately and not in the headline count: embedding
  edges are nonzero wte[t, c] for tokens t of the task prompts and residual channels c read by a kept
  read node or kept at final_resid; unembedding edges are nonzero lm_head[t, c] for the task's target
  tokens t and kept final_resid channels c.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .sites import FINAL, node_id


@dataclass(frozen=True)
class Edge:
    src: str        # node id, or "bias"
    tgt: str        # node id
    weight: float


def edge_matrices(model: nn.Module) -> list[tuple[str, str, Tensor, Tensor | None]]:
    """(src_site, tgt_site, weight [tgt_width, src_width], bias [tgt_width] or None) for every layer."""
    cfg = model.config
    d = cfg.d_attn
    out = []
    for L, block in enumerate(model.transformer.h):
        attn, mlp = block.attn, block.mlp
        w, b = attn.c_attn.weight, attn.c_attn.bias
        for i, s in enumerate("qkv"):
            out.append((f"{L}.attn.act_in", f"{L}.attn.{s}", w[i * d:(i + 1) * d],
                        None if b is None else b[i * d:(i + 1) * d]))
        out.append((f"{L}.attn.v", f"{L}.attn.resid_delta", attn.c_proj.weight, attn.c_proj.bias))
        out.append((f"{L}.mlp.act_in", f"{L}.mlp.post_act", mlp.c_fc.weight, mlp.c_fc.bias))
        out.append((f"{L}.mlp.post_act", f"{L}.mlp.resid_delta", mlp.c_proj.weight, mlp.c_proj.bias))
    return out


@torch.no_grad()
def circuit_edges(model: nn.Module, kept: dict[str, Sequence[int]]) -> tuple[list[Edge], list[Edge]]:
    """(weight edges, bias edges) between the kept nodes of a circuit."""
    edges, bias_edges = [], []
    for src, tgt, w, b in edge_matrices(model):
        src_ch, tgt_ch = sorted(kept.get(src, ())), sorted(kept.get(tgt, ()))
        if tgt_ch and b is not None:
            for c in tgt_ch:
                if b[c] != 0:
                    bias_edges.append(Edge("bias", node_id(tgt, c), float(b[c])))
        if not (src_ch and tgt_ch):
            continue
        sub = w[tgt_ch][:, src_ch].float().cpu()                   # [n_tgt, n_src]
        for i, j in sub.nonzero().tolist():
            edges.append(Edge(node_id(src, src_ch[j]), node_id(tgt, tgt_ch[i]), float(sub[i, j])))
    return edges, bias_edges


def residual_reads(kept: dict[str, Sequence[int]]) -> set[int]:
    """Residual channels read by the circuit: kept act_in channels of any layer, and kept final_resid."""
    return {c for s, chans in kept.items() if s.endswith(".act_in") or s == FINAL for c in chans}


@torch.no_grad()
def embedding_edges(model: nn.Module, kept: dict[str, Sequence[int]], tokens: Iterable[int]) -> int:
    """Nonzero wte[t, c] for prompt tokens t and residual channels c the circuit reads."""
    chans, toks = sorted(residual_reads(kept)), sorted(set(tokens))
    if not chans or not toks:
        return 0
    return int(torch.count_nonzero(model.transformer.wte.weight[toks][:, chans]))


@torch.no_grad()
def unembedding_edges(model: nn.Module, kept: dict[str, Sequence[int]], targets: Iterable[int]) -> list[Edge]:
    """Nonzero lm_head[t, c] * ln_f gain[c] from kept final_resid channels c to target tokens t
    (target node ids are `logit.{t}`)."""
    chans, toks = sorted(kept.get(FINAL, ())), sorted(set(targets))
    if not chans or not toks:
        return []
    gain = model.transformer.ln_f.weight
    w = model.lm_head.weight[toks][:, chans] * (gain[chans] if gain is not None else 1.0)
    return [Edge(node_id(FINAL, chans[j]), f"logit.{toks[i]}", float(w[i, j])) for i, j in w.nonzero().tolist()]


def geometric_mean(values: Iterable[float]) -> float | None:
    """Geometric mean; a zero counts as 1 (an empty circuit has log-size 0); None for no values."""
    vals = [max(float(v), 1.0) for v in values]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None
