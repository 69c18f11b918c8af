"""The site declaration (sparseformer/sites.py) is what the model, the pruner, the edges and the viewer read."""

import dataclasses

import torch

import sparseformer.sites as sites_mod
from sparseformer.config import AFRAC_SITES, ModelConfig
from sparseformer.hooks import record
from sparseformer.model import GPT
from sparseformer.prune.ablate import Ablator
from sparseformer.prune.edges import edge_matrices
from sparseformer.sites import LAYER_SITES, Site, abstopk_widths, mask_sites, site_spec, viewer_layout
from sparseformer.tasks import TaskBatch


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=40, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=32, block_size=16, afrac=0.5,
                afrac_sites=AFRAC_SITES)
    return ModelConfig(**{**base, **kw})


def test_every_abstopk_name_is_one_declared_site():
    names = [s.abstopk for s in LAYER_SITES if s.abstopk]
    assert tuple(names) == AFRAC_SITES and len(set(names)) == len(names)


def test_declared_widths_and_abstopk_match_the_forward_pass():
    cfg = small(d_mlp=24, n_head=3, d_model=24)
    model = GPT(cfg).eval()
    hooked = [f"0.{s.name}" for s in LAYER_SITES if s.name in ("resid_mid",) or s.mask]
    with record(model, hooked + ["final_resid"]) as rec:
        model(torch.randint(0, 40, (2, 5)))
    widths = abstopk_widths(cfg)
    for s in LAYER_SITES:
        if f"0.{s.name}" in rec:
            x = rec[f"0.{s.name}"]
            assert x.shape[-1] == getattr(cfg, s.width)
            assert s.abstopk is None or widths[s.abstopk] == x.shape[-1]
            if s.abstopk:                                        # every AbsTopK site is on: k = int(afrac * width)
                assert int((x != 0).sum(-1).max()) <= cfg.afrac_k(x.shape[-1])
    assert rec["final_resid"].shape[-1] == cfg.d_model


def test_edge_matrices_follow_the_declaration():
    model = GPT(small())
    mats = edge_matrices(model)
    declared = [s for s in LAYER_SITES if s.edges_from]
    assert len(mats) == 2 * len(declared)
    sites = mask_sites(model.config)
    for src, tgt, w, b in mats:
        assert w.shape == (sites[tgt], sites[src]) and (b is None or b.shape == (sites[tgt],))
    assert site_spec("1.attn.q").heads and site_spec("final_resid").role == "read"


def test_adding_a_pruning_site_is_one_entry(monkeypatch):
    """The docs/extending.md example: mask the attention head outputs (hook `L.attn.y`) as well."""
    y = Site("attn.y", "d_attn", heads=True, label="attn head outputs")
    i = [s.name for s in LAYER_SITES].index("attn.v") + 1
    monkeypatch.setattr(sites_mod, "LAYER_SITES", LAYER_SITES[:i] + (y,) + LAYER_SITES[i:])
    model = GPT(small()).eval()
    sites = mask_sites(model.config)
    order = list(sites)
    assert order.index("0.attn.y") == order.index("0.attn.v") + 1 and sites["0.attn.y"] == 16
    assert any(row["name"] == "attn.y" for row in viewer_layout())
    batch = TaskBatch.from_token_pairs([([1, 2, 3], 4, [1, 5, 3], 6), ([2, 2], 4, [5, 2], 6)])
    means = {s: torch.zeros(w) for s, w in sites.items()}
    ab = Ablator(model, means)
    keep = {s: torch.ones(w) for s, w in sites.items()}
    torch.testing.assert_close(ab.logits(batch, keep), ab.logits(batch, None))
    keep["0.attn.y"] = torch.zeros(16)                        # its mask acts: ablating it changes the logits
    assert not torch.allclose(ab.logits(batch, keep), ab.logits(batch, None))
    assert dataclasses.replace(y, label="x").view_row == "attn.y"
