"""Bridge training as an objective of the one training loop (sparseformer.train.TrainObjective).

The loop trains the sparse model from scratch with its data, SparseAdamW, schedules, checkpoint sets and
resume; this objective swaps its loss for CE + the bridge terms, adds the bridges to what it trains and saves,
and adds the per-site bridge metrics to the rows that measure the validation loss.

    loss = CE(sparse) + nmse_weight * sum_i [NMSE_enc_i + NMSE_dec_i] + kl_weight * sum_i [KL_d2s_i + KL_s2d_i]

With kl_sites_per_step = n > 0 the KL terms of only n sites are computed per step, in turn (step s takes
sites s*n .. s*n+n-1 modulo the number of sites), scaled by (number of sites / n) so that the KL sum keeps its
weight on average.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import GPT
from .config import BridgeInfo
from .losses import BridgeTerms, bridge_terms
from .modules import Bridges

BRIDGES_MODULE = "bridges"          # saved as bridges.safetensors in each checkpoint set
METRIC_KEYS = ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d", "ce_d2s", "ce_s2d")


class BridgeObjective:
    """CE + the bridge terms against a frozen dense model; `modules` = {"bridges": the bridges}."""

    def __init__(self, dense: GPT, bridges: Bridges, info: BridgeInfo, device: torch.device):
        self.dense = freeze(dense).to(device)
        self.bridges = bridges
        self.info = info
        self.settings = info.settings
        self.modules: dict[str, nn.Module] = {BRIDGES_MODULE: bridges}

    def run_files(self) -> dict[str, str]:
        from ..checkpoint import BRIDGE_FILE
        return {BRIDGE_FILE: self.info.to_json()}

    def kl_sites(self, step: int) -> tuple[list[str] | None, float]:
        """The sites whose KL terms this step computes (None: all) and the scale that keeps their weight."""
        n, sites = self.settings.kl_sites_per_step, self.bridges.sites
        if n == 0 or n >= len(sites):
            return None, 1.0
        return [sites[(step * n + j) % len(sites)] for j in range(n)], len(sites) / n

    def loss(self, model: GPT, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        kl_sites, scale = self.kl_sites(step)
        terms = bridge_terms(model, self.dense, self.bridges, x, y, kl_sites=kl_sites)
        total = terms.total(self.settings.nmse_weight, self.settings.kl_weight, scale)
        return total, {k: round(v, 5) for k, v in terms.means().items()}

    @torch.no_grad()
    def evaluate(self, model: GPT, dataset, cfg, device: torch.device) -> dict:
        """Per-site metrics on the fixed validation batches: {"ce_dense", "sites": {site: {...}}}."""
        tc = cfg.train
        was_training = model.training
        model.eval()
        self.bridges.eval()
        batches = [bridge_terms(model, self.dense, self.bridges, x.to(device), y.to(device), spliced_ce=True)
                   for x, y in dataset.val_batches(tc.batch_size, tc.seq_len, tc.eval_batches)]
        model.train(was_training)
        self.bridges.train(was_training)
        return {"ce_dense": round(_mean([b.ce_dense for b in batches]), 5), "sites": site_metrics(batches)}


def site_metrics(batches: list[BridgeTerms]) -> dict[str, dict[str, float]]:
    """Each metric of each site averaged over batches."""
    sites = list(batches[0].nmse_enc)
    return {site: {key: round(_mean([getattr(b, key)[site] for b in batches]), 5) for key in METRIC_KEYS}
            for site in sites}


def _mean(values) -> float:
    return float(torch.stack([v.detach().float() for v in values]).mean())


def freeze(model: nn.Module) -> nn.Module:
    """The model in eval mode with every parameter frozen (the dense side of the bridges)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
