"""The bridge loss terms: shapes, where each term's gradient goes, and exact zeros for a model bridged to itself
(directly, and through a permuted and rescaled copy of its residual stream)."""

import pytest
import torch

from sparseformer.bridges import Bridges, bridge_sites, bridge_terms, kl_from, nmse
from sparseformer.bridges.objective import freeze

from .conftest import small_gpt
from .planted import permuted_copy, permutation_bridges


def test_nmse_is_the_fraction_of_variance_unexplained():
    t = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    assert nmse(t, t) == 0
    assert torch.allclose(nmse(t.mean((0, 1)).expand_as(t), t), torch.tensor(1.0))     # the mean explains nothing
    assert torch.allclose(nmse(2 * t, 2 * t + 0.5 * t), nmse(t, 1.25 * t))            # scale-free
    assert torch.isfinite(nmse(t, torch.ones_like(t)))                                 # a constant target


def test_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    z = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))
    logp = z.log_softmax(-1)
    assert kl_from(logp, z) == 0
    assert kl_from(logp, z.flip(-1)) > 0


def _setup():
    sparse, dense = small_gpt(0), freeze(small_gpt(1, d_model=24, n_head=3))
    sites = bridge_sites(2)
    torch.manual_seed(2)
    bridges = Bridges(sites, 24, 16, encoder_k=4)
    with torch.no_grad():
        for p in bridges.parameters():
            p.normal_(0, 0.2)
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(3))
    return sparse, dense, bridges, idx, idx.roll(-1, 1)


def _grads(params):
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in params}


def test_every_term_has_the_right_shape_and_gradients():
    sparse, dense, bridges, idx, y = _setup()
    sites = bridges.sites
    terms = bridge_terms(sparse, dense, bridges, idx, y)
    for kind in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert list(getattr(terms, kind)) == sites
    assert terms.ce.shape == () and torch.isfinite(terms.ce)
    for i, site in enumerate(sites):
        layer = int(site.split(".")[0])
        for kind in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
            sparse.zero_grad(set_to_none=True)
            bridges.zero_grad(set_to_none=True)
            terms = bridge_terms(sparse, dense, bridges, idx, y)
            term = getattr(terms, kind)[site]
            assert term.shape == () and torch.isfinite(term) and term >= 0
            term.backward()
            enc, dec = _grads(bridges.encoders[i].named_parameters()), _grads(bridges.decoders[i].named_parameters())
            s = _grads(sparse.named_parameters())
            assert all(p.grad is None for p in dense.parameters())                  # frozen
            others = [j for j in range(len(sites)) if j != i]
            assert not any(_grads(bridges.encoders[j].named_parameters())["weight"] for j in others)
            assert not any(_grads(bridges.decoders[j].named_parameters())["weight"] for j in others)
            before = s["transformer.wte.weight"]                   # the sparse model up to the site
            after = s["lm_head.weight"]                            # ... and after it
            later_block = s[f"transformer.h.{layer}.mlp.c_fc.weight"]
            if kind == "nmse_enc":        # f_i(h_d) against h_s: the encoder and the sparse model up to i
                assert enc["weight"] and not dec["weight"] and before and not after
            elif kind == "nmse_dec":      # g_i(h_s) against h_d: the decoder and the sparse model up to i
                assert dec["weight"] and not enc["weight"] and before and not after
            elif kind == "kl_d2s":        # the sparse model from site i on the encoded dense residual
                assert enc["weight"] and not dec["weight"] and after and later_block and not before
            else:                         # the dense model from site i on the decoded sparse residual
                assert dec["weight"] and not enc["weight"] and before and not after


def test_total_weights_the_sums():
    sparse, dense, bridges, idx, y = _setup()
    terms = bridge_terms(sparse, dense, bridges, idx, y)
    nmse_sum = sum(terms.nmse_enc.values()) + sum(terms.nmse_dec.values())
    kl_sum = sum(terms.kl_d2s.values()) + sum(terms.kl_s2d.values())
    assert torch.allclose(terms.total(0.5, 2.0), terms.ce + 0.5 * nmse_sum + 2.0 * kl_sum)
    assert torch.allclose(terms.total(0.0, 0.0), terms.ce)
    one = bridge_terms(sparse, dense, bridges, idx, y, kl_sites=["0.resid_mid"])
    assert list(one.kl_d2s) == ["0.resid_mid"] and len(one.nmse_enc) == 4
    assert torch.allclose(one.total(1.0, 1.0, 4.0), one.ce + sum(one.nmse_enc.values()) + sum(one.nmse_dec.values())
                          + 4.0 * (one.kl_d2s["0.resid_mid"] + one.kl_s2d["0.resid_mid"]))


def test_a_model_bridged_to_itself_has_zero_nmse_and_kl():
    model = freeze(small_gpt(4))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    bridges = Bridges.identity(bridge_sites(2), 16)
    terms = bridge_terms(model, model, bridges, idx, idx, spliced_ce=True)
    for kind in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert all(v == 0 for v in getattr(terms, kind).values()), kind
    assert all(v == terms.ce for v in list(terms.ce_d2s.values()) + list(terms.ce_s2d.values()))


@pytest.mark.parametrize("alpha", [2.0, 0.37])
def test_a_permuted_rescaled_copy_bridged_back_has_zero_nmse_and_kl(alpha):
    dense = freeze(small_gpt(6))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    sparse = freeze(permuted_copy(dense, perm, alpha))
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(8))
    terms = bridge_terms(sparse, dense, permutation_bridges(bridge_sites(2), perm, alpha), idx, idx)
    for kind in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert all(abs(float(v.detach())) < 1e-5 for v in getattr(terms, kind).values()), (kind, getattr(terms, kind))
    wrong = permutation_bridges(bridge_sites(2), perm.roll(1), alpha)           # a wrong map is not free
    bad = bridge_terms(sparse, dense, wrong, idx, idx)
    assert all(float(v.detach()) > 0.1 for v in bad.nmse_enc.values())
