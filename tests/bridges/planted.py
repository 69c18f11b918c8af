"""A planted pair: a model and a copy of it whose residual stream is permuted and scaled, h_s = alpha * h_d[perm]
at every residual site, with the bridges that map one exactly onto the other. Sparse channel c is dense channel
perm[c]; after the RMSNorms (whose gains are permuted too) the two models compute the same function."""

import copy

import torch

from sparseformer.bridges import Bridges
from sparseformer.model import GPT


@torch.no_grad()
def permuted_copy(model: GPT, perm: torch.Tensor, alpha: float) -> GPT:
    """The copy: every residual write (embeddings, block outputs) scaled by alpha and permuted, every residual read
    (c_attn, c_fc, lm_head columns, the norm gains) permuted to match."""
    new = copy.deepcopy(model)
    sd = new.state_dict()
    for name, t in sd.items():
        if name in ("transformer.wte.weight", "transformer.wpe.weight"):
            t.copy_(alpha * t[:, perm])
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            t.copy_(t[perm])
        elif name.endswith(("c_attn.weight", "c_fc.weight")) or name == "lm_head.weight":
            t.copy_(t[:, perm])
        elif name.endswith("c_proj.weight"):
            t.copy_(alpha * t[perm, :])
        elif name.endswith("c_proj.bias"):
            t.copy_(alpha * t[perm])
    new.load_state_dict(sd)
    return new


def permutation_bridges(sites: list[str], perm: torch.Tensor, alpha: float) -> Bridges:
    """Encoders h_d -> alpha * h_d[perm] and decoders h_s -> h_s[perm^-1] / alpha, no AbsTopK."""
    d = len(perm)
    P = torch.eye(d)[perm]                       # (P h)[i] = h[perm[i]]
    bridges = Bridges(sites, d, d, None)
    with torch.no_grad():
        for enc, dec in zip(bridges.encoders, bridges.decoders):
            enc.weight.copy_(alpha * P)
            dec.weight.copy_(P.T / alpha)
    return bridges
