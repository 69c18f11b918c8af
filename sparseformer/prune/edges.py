"""Circuit edges: nonzero weights between kept nodes, and the geometric mean over tasks (docs/pruning.md).

The weight matrices that make edges are declared with the sites (`sparseformer.sites`, `edges_from`): per
layer, c_attn's q / k / v row blocks (act_in -> q, k, v), the attention c_proj (v -> attn.resid_delta: head
output channel j carries v channel j), c_fc (mlp.act_in -> post_act) and the MLP c_proj (post_act ->
mlp.resid_delta). Weights are [out, in], so rows index the target node and columns the source. The headline
count is these edges; bias entries into kept targets are counted separately ("bias edges"). Not edges:
q.k pairings, and write -> read links along one residual channel (an identity).

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

from ..sites import LAYER_SITES, site_spec
from .sites import FINAL, node_id


@dataclass(frozen=True)
class Edge:
    src: str        # node id, or "bias"
    tgt: str        # node id
    weight: float


def edge_matrices(model: nn.Module) -> list[tuple[str, str, Tensor, Tensor | None]]:
    """(src_site, tgt_site, weight [tgt_width, src_width], bias [tgt_width] or None) for every layer, from the
    site declarations."""
    out = []
    for L, block in enumerate(model.transformer.h):
        for site in LAYER_SITES:
            src = site.edges_from
            if src is None:
                continue
            lin = block.get_submodule(src.weight)
            rows = lin.weight.shape[0] // src.blocks
            part = slice(src.block * rows, (src.block + 1) * rows)
            out.append((f"{L}.{src.site}", f"{L}.{site.name}", lin.weight[part],
                        None if lin.bias is None else lin.bias[part]))
    return out


def _kept_blocks(model: nn.Module, kept: dict[str, Sequence[int]]):
    """Per edge matrix: (src, tgt, kept src channels, kept tgt channels, weight, bias)."""
    for src, tgt, w, b in edge_matrices(model):
        yield src, tgt, sorted(kept.get(src, ())), sorted(kept.get(tgt, ())), w, b


@torch.no_grad()
def count_edges(model: nn.Module, kept: dict[str, Sequence[int]]) -> int:
    """The headline size of a circuit: nonzero weights between its kept nodes (without listing them)."""
    return sum(int(torch.count_nonzero(w[t][:, s])) for _, _, s, t, w, _ in _kept_blocks(model, kept) if s and t)


@torch.no_grad()
def circuit_edges(model: nn.Module, kept: dict[str, Sequence[int]]) -> tuple[list[Edge], list[Edge]]:
    """(weight edges, bias edges) between the kept nodes of a circuit."""
    edges, bias_edges = [], []
    for src, tgt, src_ch, tgt_ch, w, b in _kept_blocks(model, kept):
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


class EdgeGraph:
    """The edge pattern of a model over the flat node vector (sites in `mask_sites` order), for counting the
    edges of many circuits fast: `count(m)` is the number of edges between nodes with m = 1, differentiable
    in m (the mask search's edge penalty), and `degrees(keep)` each node's edges to the kept nodes (the
    cleaning pass tries the nodes that cost the most edges first)."""

    def __init__(self, model: nn.Module, sites: dict[str, int], device: torch.device | str = "cpu"):
        starts, pos = {}, 0
        for site, width in sites.items():
            starts[site] = pos
            pos += width
        self.n = pos
        self.blocks = []                    # (src start, src width, tgt start, tgt width, 0/1 pattern [tgt, src])
        with torch.no_grad():
            for src, tgt, w, _ in edge_matrices(model):
                pattern = (w != 0).to(device=device, dtype=torch.float32)
                self.blocks.append((starts[src], w.shape[1], starts[tgt], w.shape[0], pattern))

    def count(self, m: Tensor) -> Tensor:
        """sum over edge matrices of m_tgt . (pattern @ m_src); equals count_edges for a 0/1 m."""
        total = m.new_zeros(())
        for s0, sw, t0, tw, pattern in self.blocks:
            total = total + m[t0:t0 + tw] @ (pattern @ m[s0:s0 + sw])
        return total

    @torch.no_grad()
    def degrees(self, keep: Tensor) -> Tensor:
        """Per node, its edges to kept nodes (either direction); a flat float vector."""
        keep = keep.float()
        deg = torch.zeros(self.n, device=keep.device)
        for s0, sw, t0, tw, pattern in self.blocks:
            pattern = pattern.to(keep.device)
            deg[t0:t0 + tw] += pattern @ keep[s0:s0 + sw]
            deg[s0:s0 + sw] += keep[t0:t0 + tw] @ pattern
        return deg


def residual_reads(kept: dict[str, Sequence[int]]) -> set[int]:
    """Residual channels read by the circuit: kept channels of the read sites (act_in of any layer, final_resid)."""
    return {c for s, chans in kept.items() if site_spec(s).role == "read" for c in chans}


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
