"""Pieces of the pruner: sites and node ids, masked forwards, frozen norms, the surrogate gradient,
bisection, calibration, edges, means and their cache."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sparseformer.config import ModelConfig
from sparseformer.hooks import record, replace
from sparseformer.model import GPT
from sparseformer.prune.ablate import Ablator, frozen_norm_scales, mask_hook, recorded_norm_scales
from sparseformer.prune.edges import circuit_edges, geometric_mean
from sparseformer.prune.means import MEANS_FILE, compute_means, run_means
from sparseformer.prune.search import bisect_nodes, calibrate, heaviside, rank_nodes
from sparseformer.prune.sites import (channel_label, flat_from_kept, keep_masks, kept_from_flat, mask_sites,
                                      n_nodes)
from sparseformer.prune.ablate import calibrated_loss
from sparseformer.tasks import TaskBatch
from sparseformer.prune.validate import random_circuit


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=40, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=32, block_size=16, afrac=0.5,
                afrac_sites=("attn_in", "attn_out", "mlp_in", "mlp_out", "mlp_neuron", "attn_v"))
    base.update(kw)
    return ModelConfig(**base)


def random_model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(small(**kw)).eval()
    with torch.no_grad():                       # sparse weights, so edge counts are not all-to-all
        for p in model.parameters():
            p.mul_((torch.rand_like(p) < 0.4).float())
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p) * (torch.rand_like(p) < 0.5))
    return model


def random_batch(vocab=40, pairs=6, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(pairs):
        n = int(torch.randint(2, 9, (1,), generator=g))
        a = torch.randint(0, vocab, (n,), generator=g).tolist()
        b = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append((a, 3, b, 7))
    return TaskBatch.from_token_pairs(out)


def test_mask_sites_match_the_spec_node_count():
    # the paper's csp_yolo1 (12 layers, d_model 1024, d_mlp 4096) has 136,192 mask nodes incl. final_resid
    cfg = ModelConfig(n_layer=12, d_model=1024, n_head=64, d_head=16, d_mlp=4096)
    sites = mask_sites(cfg)
    assert n_nodes(sites) == 136_192
    assert list(sites)[:5] == ["0.attn.act_in", "0.attn.q", "0.attn.k", "0.attn.v", "0.attn.resid_delta"]
    assert list(sites)[-1] == "final_resid"
    model = GPT(small())
    assert set(mask_sites(model.config)) <= set(model.hook_names())


def test_channel_labels():
    assert channel_label("3.attn.q", 37, 16) == "h2.ch5"
    assert channel_label("0.mlp.post_act", 37, 16) == "37"


@given(st.data())
def test_flat_and_kept_round_trip(data):
    sites = mask_sites(small())
    n = n_nodes(sites)
    idx = data.draw(st.sets(st.integers(0, n - 1), max_size=40))
    kept = kept_from_flat(idx, sites)
    assert set(flat_from_kept(kept, sites).nonzero()[:, 0].tolist()) == idx
    assert all(0 <= c < sites[s] for s, chans in kept.items() for c in chans)


def test_last_position_logits_match_the_full_forward():
    for bigram in (False, True):
        model = random_model(bigram_table=bigram)
        batch = random_batch()
        full = model(batch.idx)[torch.arange(batch.idx.shape[0]), batch.last]
        fast = Ablator(model, {s: torch.zeros(w) for s, w in mask_sites(model.config).items()}).logits(batch, None)
        torch.testing.assert_close(fast, full)


def test_keeping_every_node_is_the_unpruned_model_and_ablated_nodes_take_their_mean():
    model = random_model()
    sites = mask_sites(model.config)
    batch = random_batch()
    means = {s: torch.randn(w) for s, w in sites.items()}
    ones = {s: torch.ones(w) for s, w in sites.items()}
    for freeze in (False, True):
        ab = Ablator(model, means, freeze_norms=freeze)
        torch.testing.assert_close(ab.logits(batch, ones), ab.logits(batch, None))
    keep = keep_masks({"1.mlp.post_act": [0, 5]}, sites)["1.mlp.post_act"]
    with record(model, "1.mlp.post_act") as clean:
        model(batch.idx)
    with replace(model, {"1.mlp.post_act": mask_hook(keep, means["1.mlp.post_act"])}), \
            record(model, "1.mlp.post_act") as rec:
        model(batch.idx)
    x, x0 = rec["1.mlp.post_act"], clean["1.mlp.post_act"]
    torch.testing.assert_close(x[..., [0, 5]], x0[..., [0, 5]])
    others = [c for c in range(sites["1.mlp.post_act"]) if c not in (0, 5)]
    torch.testing.assert_close(x[..., others], means["1.mlp.post_act"][others].expand_as(x[..., others]))


def test_frozen_norms_divide_by_the_unpruned_rms():
    model = random_model()
    batch = random_batch()
    with torch.no_grad(), recorded_norm_scales(model) as scales:
        model(batch.idx)
    with record(model, "final_resid") as clean:
        model(batch.idx)
    rms = clean["final_resid"].pow(2).mean(-1, keepdim=True).add(torch.finfo(torch.float32).eps).sqrt()
    torch.testing.assert_close(scales[-1], rms)                     # ln_f is the last RMSNorm
    half = lambda x, name: 0.5 * x                                   # shrink the residual stream
    with torch.no_grad(), replace(model, {"final_resid": half}), frozen_norm_scales(model, scales):
        frozen = model(batch.idx)
    with torch.no_grad():
        expect = model.lm_head(0.5 * clean["final_resid"] / rms * model.transformer.ln_f.weight)
    torch.testing.assert_close(frozen, expect)
    with torch.no_grad(), replace(model, {"final_resid": half}):
        renormed = model(batch.idx)                                  # the live norm undoes the shrink
    torch.testing.assert_close(renormed, model(batch.idx), atol=1e-4, rtol=1e-4)


def test_heaviside_forward_is_a_step_and_backward_the_sigmoid_derivative():
    tau = torch.tensor([-0.5, 0.0, 1e-3, 0.7], requires_grad=True)
    T = 0.5
    m = heaviside(tau, T)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0]
    m.sum().backward()
    s = torch.sigmoid(tau.detach() / T)
    torch.testing.assert_close(tau.grad, s * (1 - s) / T)


@given(threshold=st.integers(0, 50), n=st.integers(1, 50))
def test_bisection_finds_the_smallest_k_that_reaches_the_target(threshold, n):
    threshold = min(threshold, n)
    calls = []

    def loss_at(k):
        calls.append(k)
        return (0.1 if k >= threshold else 1.0,)

    assert bisect_nodes(loss_at, n, target=0.15) == threshold
    assert len(calls) <= math.ceil(math.log2(n + 1)) + 2


def test_ranking_is_by_tau_with_ties_in_forward_order():
    assert rank_nodes(torch.tensor([0.1, 1.0, 0.1, -1.0, 1.0])).tolist() == [1, 4, 0, 2, 3]


def test_contrast_loss_calibration_matches_the_formula():
    batch = TaskBatch.from_token_pairs([([1, 2], 3, [1, 4], 5), ([2, 2], 3, [4, 4], 5)])
    z = torch.randn(4, 8)
    a, b = 1.7, -0.3
    d = a * (z[:, 3] - z[:, 5]) + b
    expect = torch.cat([F.softplus(-d[:2]), F.softplus(d[2:])]).mean()
    torch.testing.assert_close(calibrated_loss(z, batch, a, b), expect)


def test_calibration_lowers_the_loss_of_underconfident_logits():
    batch = TaskBatch.from_token_pairs([([i], 3, [i + 1], 5) for i in range(8)])
    z = torch.zeros(16, 8)
    z[:8, 3], z[8:, 5] = 0.2, 0.2                     # right but timid
    z[:, 3] += 0.1                                    # and biased towards token 3
    a, b, loss = calibrate(z, batch)
    assert a > 1 and loss < float(calibrated_loss(z, batch)) and b < 0


def test_calibration_never_flips_the_sign():
    batch = TaskBatch.from_token_pairs([([i], 3, [i + 1], 5) for i in range(8)])
    z = torch.zeros(16, 8)
    z[:8, 5], z[8:, 3] = 1.0, 1.0                     # confidently wrong
    a, _, _ = calibrate(z, batch)
    assert a > 0


def test_full_circuit_edges_are_every_nonzero_weight():
    model = random_model()
    sites = mask_sites(model.config)
    everything = {s: list(range(w)) for s, w in sites.items()}
    edges, bias = circuit_edges(model, everything)
    mats = [m for blk in model.transformer.h for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj)]
    assert len(edges) == sum(int(torch.count_nonzero(m.weight)) for m in mats)
    assert len(bias) == sum(int(torch.count_nonzero(m.bias)) for m in mats)


def test_edges_only_join_kept_nodes():
    model = random_model(seed=3)
    kept = {"0.attn.act_in": [0, 3, 9], "0.attn.k": [1, 8], "0.attn.v": [2, 15], "0.attn.resid_delta": [0, 4, 9],
            "1.mlp.act_in": [4], "1.mlp.post_act": [0, 7, 31]}
    edges, _ = circuit_edges(model, kept)
    c_attn = model.transformer.h[0].attn.c_attn.weight
    expect = {(f"0.attn.act_in.{i}", f"0.attn.{s}.{j}") for s, off in (("k", 16), ("v", 32)) for j in kept[f"0.attn.{s}"]
              for i in kept["0.attn.act_in"] if c_attn[off + j, i] != 0}
    proj = model.transformer.h[0].attn.c_proj.weight
    expect |= {(f"0.attn.v.{j}", f"0.attn.resid_delta.{r}") for j in kept["0.attn.v"] for r in kept["0.attn.resid_delta"]
               if proj[r, j] != 0}
    fc = model.transformer.h[1].mlp.c_fc.weight
    expect |= {(f"1.mlp.act_in.{i}", f"1.mlp.post_act.{n}") for i in kept["1.mlp.act_in"] for n in kept["1.mlp.post_act"]
               if fc[n, i] != 0}
    assert {(e.src, e.tgt) for e in edges} == expect


def test_geometric_mean():
    assert geometric_mean([4, 16]) == pytest.approx(8.0)
    assert geometric_mean([0, 9]) == pytest.approx(3.0)        # an empty circuit counts as size 1
    assert geometric_mean([]) is None


def test_random_circuit_keeps_the_count_per_site():
    sites = mask_sites(small())
    kept = {"0.attn.v": [1, 2, 3], "1.mlp.post_act": [5], "final_resid": [0, 1]}
    rnd = random_circuit(kept, sites, torch.Generator().manual_seed(0))
    assert {s: len(c) for s, c in rnd.items()} == {s: len(c) for s, c in kept.items()}


def test_means_are_token_averages_after_abstopk():
    model = random_model()
    sites = mask_sites(model.config)
    batches = [torch.randint(0, 40, (3, 10)), torch.randint(0, 40, (2, 10))]
    means = compute_means(model, batches, sites)
    with record(model, "0.mlp.post_act") as rec:
        model(torch.cat(batches))
    torch.testing.assert_close(means["0.mlp.post_act"], rec["0.mlp.post_act"].mean((0, 1)))
    assert means["0.attn.resid_delta"].shape == (16,)


class _FakeRun:
    def __init__(self, path, model, step):
        self.path, self.model, self.step = path, model, step
        self.config = type("C", (), {"model": model.config, "train": type("T", (), {"seq_len": 10})()})()


def test_mean_cache_is_keyed_by_step_and_tokens(tmp_path, monkeypatch):
    import sparseformer.prune.means as means_mod
    model = random_model()
    calls = []

    def fake_batches(run, n_tokens, seq_len, **kw):
        calls.append(n_tokens)
        return [torch.randint(0, 40, (4, seq_len), generator=torch.Generator().manual_seed(0))]

    monkeypatch.setattr(means_mod, "pretraining_batches", fake_batches)
    first = run_means(_FakeRun(tmp_path, model, 5), n_tokens=40)
    assert (tmp_path / MEANS_FILE).is_file() and len(calls) == 1
    again = run_means(_FakeRun(tmp_path, model, 5), n_tokens=40)
    assert len(calls) == 1 and all(torch.equal(first[s], again[s]) for s in first)
    run_means(_FakeRun(tmp_path, model, 6), n_tokens=40)              # a newer checkpoint: recompute
    run_means(_FakeRun(tmp_path, model, 6), n_tokens=80)              # more tokens asked: recompute
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@given(threshold=st.integers(0, 60), n=st.integers(1, 60))
def test_reach_nodes_finds_the_smallest_k_even_when_the_full_model_misses(threshold, n):
    """A loss that dips under the target only for k in [threshold, n - 1] (the unpruned model misses it)."""
    from sparseformer.prune.search import reach_nodes
    threshold = min(threshold, n - 1)
    loss_at = lambda k: (0.1 if threshold <= k < n else 1.0,)
    k = reach_nodes(loss_at, n, 0.15)
    probes = {0, n} | {2 ** i for i in range(n.bit_length()) if 2 ** i < n}
    if any(threshold <= p < n for p in probes):
        assert k == threshold
    else:                                    # no probe lands in the window: the best probe comes back
        assert loss_at(k)[0] == 1.0
