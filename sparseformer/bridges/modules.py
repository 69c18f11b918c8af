"""The bridges between a dense model and a sparse one: one encoder and one decoder per residual site.

The sites are the residual stream before each attention block (`L.resid_in`; `0.resid_in` holds the token
and position embeddings) and before each MLP block (`L.resid_mid`), in front of the blocks' RMSNorms, the
same hook names in both models (docs/bridges.md; Gao et al. 2025, section 2.3).

    encoder f_i: dense -> sparse,  AbsTopK_k(W_f h_d + b_f)    [.., d_dense] -> [.., d_sparse]
    decoder g_i: sparse -> dense,  W_g h_s + b_g                [.., d_sparse] -> [.., d_dense]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model import abstopk


def bridge_sites(n_layer: int) -> list[str]:
    """The residual sites of a model of this depth, in forward order."""
    return [f"{L}.{name}" for L in range(n_layer) for name in ("resid_in", "resid_mid")]


class Encoder(nn.Linear):
    """Linear dense -> sparse, then AbsTopK keeping k entries per token (k None: no AbsTopK)."""

    def __init__(self, d_dense: int, d_sparse: int, k: int | None):
        super().__init__(d_dense, d_sparse)
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y if self.k is None else abstopk(y, self.k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


class Bridges(nn.Module):
    """Encoders and decoders of every site; `encoders[i]`, `decoders[i]` belong to `sites[i]`."""

    def __init__(self, sites: list[str], d_dense: int, d_sparse: int, encoder_k: int | None):
        super().__init__()
        self.sites = list(sites)
        self.d_dense, self.d_sparse, self.encoder_k = d_dense, d_sparse, encoder_k
        self.encoders = nn.ModuleList(Encoder(d_dense, d_sparse, encoder_k) for _ in sites)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in sites)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every weight and bias 0: each bridge starts as the constant prediction (NMSE 1 against a centred
        target) whatever the two residual streams' scales, and draws nothing from the random state the
        model's init uses. A linear map has no hidden units whose symmetry a zero init would fail to break."""
        for lin in list(self.encoders) + list(self.decoders):
            lin.weight.zero_()
            lin.bias.zero_()

    def index(self, site: str) -> int:
        return self.sites.index(site)

    def encode(self, site: str, h_dense: Tensor) -> Tensor:
        return self.encoders[self.index(site)](h_dense)

    def decode(self, site: str, h_sparse: Tensor) -> Tensor:
        return self.decoders[self.index(site)](h_sparse)

    @classmethod
    def identity(cls, sites: list[str], d_model: int) -> Bridges:
        """Identity encoders (no AbsTopK) and decoders: the bridges of a model coupled to itself."""
        bridges = cls(sites, d_model, d_model, None)
        with torch.no_grad():
            for lin in list(bridges.encoders) + list(bridges.decoders):
                lin.weight.copy_(torch.eye(d_model))
                lin.bias.zero_()
        return bridges
