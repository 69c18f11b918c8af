"""The bridge loss terms (docs/bridges.md; Gao et al. 2025, section 2.3 and appendix A.3).

For every residual site i, with h_d = the dense model's residual there and h_s = the sparse model's:

    NMSE, encoder:  nmse(f_i(h_d), h_s)            the dense residual predicts the sparse one
    NMSE, decoder:  nmse(g_i(h_s), h_d)            the sparse residual predicts the dense one
    KL, d -> s:     KL(y_d || sparse model run from site i on f_i(h_d))   dense up to i, sparse after
    KL, s -> d:     KL(y_d || dense model run from site i on g_i(h_s))    sparse up to i, dense after

where y_d is the dense model's next-token distribution, and nmse is the fraction of variance unexplained
(docs/bridges.md says why). The dense model is frozen: gradients pass through its layers into the decoders and
the sparse model, never into its weights. Every reduction is per token first and then over at most one
batch of tokens, so a step gives the same bits at any thread count (docs/reproducibility.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import replace
from .modules import Bridges

NMSE_FLOOR = 1e-12      # a target with no variance (a constant residual) gives a finite NMSE


def nmse(pred: Tensor, target: Tensor) -> Tensor:
    """Fraction of the target's variance the prediction leaves unexplained, over all tokens:
    sum_t ||pred_t - target_t||^2 / sum_t ||target_t - mean_t(target)||^2 (0 = exact, 1 = as good as the mean)."""
    d = target.shape[-1]
    p, t = pred.float().reshape(-1, d), target.float().reshape(-1, d)
    err = (p - t).pow(2).sum(-1).sum()
    var = (t - t.mean(0)).pow(2).sum(-1).sum()
    return err / var.clamp_min(NMSE_FLOOR)


def kl_from(logp_ref: Tensor, logits: Tensor, p_ref: Tensor | None = None) -> Tensor:
    """KL(p_ref || softmax(logits)) per token, averaged over tokens; logp_ref are log-probabilities [.., V]
    (p_ref = their exp, when the caller has it already)."""
    p_ref = logp_ref.exp() if p_ref is None else p_ref
    logq = logits.float().log_softmax(-1)
    return (p_ref * (logp_ref - logq)).sum(-1).mean()


def lm_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


@contextmanager
def capture(model: nn.Module, sites: list[str]) -> Iterator[dict[str, Tensor]]:
    """Keep the activation at each site during a forward, still attached to the graph (unlike hooks.record)."""
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, name: str) -> None:
        store[name] = x

    with replace(model, {s: keep for s in sites}):
        yield store


def spliced(model: nn.Module, idx: Tensor, site: str, value: Tensor) -> Tensor:
    """The model's logits with its residual at `site` replaced by `value` (the same shape): the layers before the
    site still run, but nothing reaches the output through them."""
    with replace(model, {site: lambda x, _name: value.to(x.dtype)}):
        return model(idx)


@dataclass
class BridgeTerms:
    """One batch's loss terms: the sparse model's CE and, per site, the bridge terms (0-d tensors)."""
    ce: Tensor
    nmse_enc: dict[str, Tensor] = field(default_factory=dict)
    nmse_dec: dict[str, Tensor] = field(default_factory=dict)
    kl_d2s: dict[str, Tensor] = field(default_factory=dict)
    kl_s2d: dict[str, Tensor] = field(default_factory=dict)
    ce_d2s: dict[str, Tensor] = field(default_factory=dict)     # evaluation only: CE of the spliced paths
    ce_s2d: dict[str, Tensor] = field(default_factory=dict)
    ce_dense: Tensor | None = None

    def total(self, nmse_weight: float, kl_weight: float, kl_scale: float = 1.0) -> Tensor:
        """CE + nmse_weight * sum of NMSE terms + kl_weight * kl_scale * sum of the KL terms computed."""
        loss = self.ce
        nmse_terms = list(self.nmse_enc.values()) + list(self.nmse_dec.values())
        kl_terms = list(self.kl_d2s.values()) + list(self.kl_s2d.values())
        if nmse_terms and nmse_weight:
            loss = loss + nmse_weight * torch.stack(nmse_terms).sum()
        if kl_terms and kl_weight:
            loss = loss + (kl_weight * kl_scale) * torch.stack(kl_terms).sum()
        return loss

    def means(self) -> dict[str, float]:
        """Each kind of term averaged over the sites it was computed at (for metrics rows)."""
        out = {"ce": float(self.ce.detach())}
        for key in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
            vals = getattr(self, key)
            if vals:
                out[key] = float(torch.stack([v.detach() for v in vals.values()]).mean())
        return out


def bridge_terms(sparse: nn.Module, dense: nn.Module, bridges: Bridges, idx: Tensor, y: Tensor, *,
                 kl_sites: list[str] | None = None, spliced_ce: bool = False) -> BridgeTerms:
    """The loss terms on one batch idx, y [B, T]. KL terms at `kl_sites` (None: every site); with `spliced_ce`
    also the CE of each spliced path and of the dense model (for evaluation)."""
    sites = bridges.sites
    kl_sites = sites if kl_sites is None else kl_sites
    with capture(sparse, sites) as h_s:
        logits_s = sparse(idx)
    with torch.no_grad(), capture(dense, sites) as h_d:
        logits_d = dense(idx)
    logp_d = logits_d.float().log_softmax(-1)
    p_d = logp_d.exp()
    terms = BridgeTerms(ce=lm_loss(logits_s, y), ce_dense=lm_loss(logits_d, y) if spliced_ce else None)
    for site in sites:
        enc = bridges.encode(site, h_d[site])
        dec = bridges.decode(site, h_s[site])
        terms.nmse_enc[site] = nmse(enc, h_s[site])
        terms.nmse_dec[site] = nmse(dec, h_d[site])
        if site in kl_sites:
            out_d2s = spliced(sparse, idx, site, enc)
            out_s2d = spliced(dense, idx, site, dec)
            terms.kl_d2s[site] = kl_from(logp_d, out_d2s, p_d)
            terms.kl_s2d[site] = kl_from(logp_d, out_s2d, p_d)
            if spliced_ce:
                terms.ce_d2s[site] = lm_loss(out_d2s, y)
                terms.ce_s2d[site] = lm_loss(out_s2d, y)
    return terms
