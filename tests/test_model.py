"""GPT forward, AbsTopK, attention sink, bigram table, init, and hook record/replace."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sparseformer.config import ModelConfig
from sparseformer.hooks import ablate, record, replace
from sparseformer.model import GPT, abstopk


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=64, n_layer=2, d_model=32, n_head=4, d_head=8, d_mlp=64, block_size=32)
    base.update(kw)
    return ModelConfig(**base)


@given(rows=st.integers(1, 6), cols=st.integers(1, 40), data=st.data())
def test_abstopk_keeps_k_largest_magnitudes_with_sign(rows, cols, data):
    k = data.draw(st.integers(1, cols))
    x = torch.randn(rows, cols, dtype=torch.float64)
    y = abstopk(x, k)
    assert ((y != 0).sum(-1) <= k).all()
    kth = x.abs().sort(-1, descending=True).values[:, k - 1 : k]
    kept = y != 0
    assert torch.equal(y[kept], x[kept])                      # signs and values kept
    assert (x.abs()[kept.logical_not()] <= kth.expand_as(x)[kept.logical_not()]).all()


def test_abstopk_gradient_only_through_kept_entries():
    x = torch.tensor([[3.0, -5.0, 1.0, 0.5]], requires_grad=True)
    abstopk(x, 2).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_forward_shapes_and_hook_names():
    m = GPT(small())
    idx = torch.randint(0, 64, (2, 10))
    assert m(idx).shape == (2, 10, 64)
    names = m.hook_names()
    for n in ("0.resid_in", "0.attn.act_in", "0.attn.q", "0.attn.k", "0.attn.v", "0.attn.y",
              "0.attn.resid_delta", "0.resid_mid", "0.mlp.act_in", "0.mlp.post_act", "0.mlp.resid_delta",
              "1.mlp.resid_delta", "final_resid"):
        assert n in names
    assert names[-1] == "final_resid"
    reached = []                                        # the order the forward pass reaches the sites
    with replace(m, {n: (lambda t, name: reached.append(name)) for n in names}):
        m(idx)
    assert names == reached


def test_afrac_sites_sparsify_recorded_activations():
    cfg = small(afrac=0.25, afrac_sites=("attn_in", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in",
                                         "mlp_neuron", "mlp_out"))
    m = GPT(cfg)
    with record(m, re.compile(r"0\..*")) as rec:
        m(torch.randint(0, 64, (2, 12)))
    widths = {"0.attn.act_in": 32, "0.attn.q": 32, "0.attn.k": 32, "0.attn.v": 32, "0.attn.resid_delta": 32,
              "0.mlp.act_in": 32, "0.mlp.post_act": 64, "0.mlp.resid_delta": 32}
    for name, w in widths.items():
        assert ((rec[name] != 0).sum(-1) <= int(0.25 * w)).all(), name
    assert ((rec["0.attn.y"] != 0).sum(-1) > 8).any()          # no AbsTopK on the head outputs


def test_replace_changes_output_and_is_removed_afterwards():
    m = GPT(small())
    idx = torch.randint(0, 64, (1, 8))
    base = m(idx)
    with replace(m, {"0.mlp.post_act": ablate(0.0)}):
        ablated = m(idx)
    assert not torch.allclose(base, ablated)
    assert torch.equal(m(idx), base)


def test_replace_with_recorded_value_is_identity():
    m = GPT(small())
    idx = torch.randint(0, 64, (1, 8))
    with record(m, "0.attn.v") as rec:
        base = m(idx)
    saved = rec["0.attn.v"]
    with replace(m, {"0.attn.v": lambda x, name: saved}):
        assert torch.allclose(m(idx), base)


def test_record_gradients():
    m = GPT(small())
    with record(m, ["0.attn.q"], grads=True) as rec:
        m(torch.randint(0, 64, (1, 8))).sum().backward()
    assert rec["0.attn.q.grad"].shape == rec["0.attn.q"].shape


def test_unknown_hook_name_suggests():
    m = GPT(small())
    with pytest.raises(ValueError, match="did you mean"):
        with record(m, "0.atn.q"):
            pass


def test_sink_matches_explicit_formula():
    cfg = small(sink=True, n_layer=1)
    m = GPT(cfg)
    attn = m.transformer.h[0].attn
    with torch.no_grad():
        attn.sink_logit.copy_(torch.linspace(-1, 2, cfg.n_head))
    x = torch.randn(2, 6, cfg.d_model)
    out = attn(x)
    q, k, v = attn.c_attn(x).split(cfg.d_attn, dim=2)
    B, T = 2, 6
    q, k, v = (t.view(B, T, cfg.n_head, cfg.d_head).transpose(1, 2) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.d_head)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    num = s.exp()
    den = num.sum(-1, keepdim=True) + attn.sink_logit.exp().view(1, -1, 1, 1)
    y = ((num / den) @ v).transpose(1, 2).reshape(B, T, -1)
    assert torch.allclose(out, attn.c_proj(y), atol=1e-5)
    assert torch.equal(attn.sink_logit.new_zeros(1), GPT(cfg).transformer.h[0].attn.sink_logit[:1])


def test_bigram_table_and_final_bias_add_to_logits():
    cfg = small(bigram_table=True)
    m = GPT(cfg)
    idx = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        base = m(idx)
        m.bigram_table.add_(1.0)
        m.final_logits_bias.add_(0.5)
    assert torch.allclose(m(idx), base + 1.5, atol=1e-5)
    assert GPT(small(bigram_table=True, learnable_bigram_table=False)).bigram_table.requires_grad is False


def test_init_follows_spec():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, n_layer=4, d_model=128, n_head=8, d_head=16, d_mlp=512)
    m = GPT(cfg)
    h = m.transformer.h[0]
    assert h.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert h.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert h.attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert torch.count_nonzero(h.mlp.c_fc.bias) == 0
    assert torch.equal(h.ln_1.weight, torch.ones(128))
    assert "wpe" not in m.transformer
    assert "wpe" in GPT(ModelConfig(vocab_size=256, n_layer=1, d_model=32, n_head=2, d_head=16, d_mlp=64,
                                    learned_pos_emb=True)).transformer


def test_d_head_independent_of_heads():
    m = GPT(small(n_head=2, d_head=8))  # n_head * d_head = 16 != d_model 32
    assert m.transformer.h[0].attn.c_attn.weight.shape == (48, 32)
    assert m(torch.randint(0, 64, (1, 4))).shape == (1, 4, 64)


def test_relu_activation():
    m = GPT(small(activation="relu"))
    with record(m, "0.mlp.post_act") as rec:
        m(torch.randint(0, 64, (1, 6)))
    assert (rec["0.mlp.post_act"] >= 0).all()


def test_causal():
    m = GPT(small(sink=True))
    idx = torch.randint(0, 64, (1, 10))
    a = m(idx)
    idx2 = idx.clone()
    idx2[0, 7:] = (idx2[0, 7:] + 1) % 64
    assert torch.allclose(m(idx2)[:, :7], a[:, :7], atol=1e-5)
