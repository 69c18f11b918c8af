"""Support-only weight gradients with a periodic dense refresh (docs/support-dw.md): the gradient a support
step computes, exact k, regrowth at a refresh, grad accumulation, the optimizer's choices, config and resume."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparseformer.checkpoint import checkpoint_file
from sparseformer.config import ModelConfig, SparsityConfig, apply_overrides, get_preset
from sparseformer.errors import ConfigError
from sparseformer.kernels.topk.reference import topk_mask_ref
from sparseformer.layers import SparseLinear
from sparseformer.model import GPT
from sparseformer.sparsity.optimizer import SparseAdamW
from sparseformer.sparsity.params import configure, param_groups, write_ks
from sparseformer.kernels.adamw import AdamWTensor
from sparseformer.sparsity.support_dw import begin_step, configure_dw, dw_state, load_dw_state, rms_terms
from sparseformer.train import train
from test_train import _cache, corpus, micro  # noqa: F401 (the corpus fixtures of the training tests)


def small_gpt(dense_every=2, candidates=1.0, seed=0):
    """A 1-layer GPT at its final densities (1/4) with support dW on every sparse linear layer."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, d_head=8, d_mlp=32, block_size=8, afrac=0.5)
    sc = SparsityConfig(weight_density=1 / 4, embed_density=1 / 2, protect_per_neuron=1, dw_mode="support",
                        dense_every=dense_every, candidates=candidates)
    model = GPT(cfg)
    configure(model, sc)
    write_ks(model, 10, 10, sc)
    for m in model.modules():
        if hasattr(m, "project_"):
            m.project_()
    configure_dw(model, sc)
    return model, sc


def batch(seed, b=3, t=8, vocab=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (b, t), generator=g), torch.randint(vocab, (b, t), generator=g)


def loss_of(model, x, y):
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))


def dense_twin_grads(model, x, y) -> dict:
    """The paper's dense gradients of `model`'s weights on (x, y), from a copy with dense dW."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, SparseLinear):
            m.set_dw_policy("dense")
    loss_of(twin, x, y).backward()
    return {n: p.grad.clone() for n, p in twin.named_parameters() if p.grad is not None}


def support_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear) and m.dw_policy.support_mode}


def test_support_step_gradient_is_the_dense_dw_at_support_and_candidates():
    model, _ = small_gpt(dense_every=4, candidates=0.5)
    opt = SparseAdamW(param_groups(model), lr=1e-3, backend="torch")
    x, y = batch(0)
    assert begin_step(model, 0)                               # step 0: a refresh
    loss_of(model, x, y).backward()
    opt.step()                                                # picks candidates from the step's gradient
    opt.zero_grad()
    assert not begin_step(model, 1)
    x, y = batch(1)
    want = dense_twin_grads(model, x, y)
    loss_of(model, x, y).backward()
    layers = support_linears(model)
    assert len(layers) == 5                                   # c_attn, c_proj, c_fc, mlp c_proj, lm_head
    for name, layer in layers.items():
        pol = layer.dw_policy
        support = layer.weight.detach().reshape(-1).nonzero().view(-1)
        assert set(support.tolist()) <= set(pol.computed.tolist())
        assert pol.computed.numel() > support.numel()          # the candidates are computed too
        got, ref = layer.weight.grad.reshape(-1), want[f"{name}.weight"].reshape(-1)
        torch.testing.assert_close(got[pol.computed], ref[pol.computed], rtol=1e-5, atol=1e-6)
        off = torch.ones_like(got, dtype=torch.bool)
        off[pol.computed] = False
        assert off.any() and torch.count_nonzero(got[off]) == 0, name


@pytest.mark.parametrize("moments", ["lazy", "decay"])
def test_support_never_holds_more_than_k(moments):
    model, _ = small_gpt(dense_every=3)
    opt = SparseAdamW(param_groups(model, weight_decay=0.1), lr=3e-2, backend="torch", dw_moments=moments)
    for step in range(7):
        begin_step(model, step)
        x, y = batch(step)
        loss_of(model, x, y).backward()
        opt.step()
        opt.zero_grad()
        for layer in support_linears(model).values():
            assert int(torch.count_nonzero(layer.weight)) <= layer.k
    assert opt.dw_stats.steps == {"refresh": 3, "support": 4}


def _constructed_layer(dense_every, candidates=0.0):
    """4 x 4 weight holding k = 4 small diagonal entries; the input and loss put a large gradient on the
    off-support entry (0, 3) and none on the support."""
    layer = SparseLinear(4, 4, bias=False, k=4, dw_mode="support", dense_every=dense_every, candidates=candidates)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4) * 0.01)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    return layer, x


def _one_step(layer, x, step, opt):
    begin_step(layer, step)
    (-layer(x)[0, 0]).backward()
    opt.step()
    opt.zero_grad()


def test_a_weight_outside_the_support_enters_at_a_refresh_only():
    layer, x = _constructed_layer(dense_every=2)
    opt = SparseAdamW([layer.weight], lr=0.1, backend="torch")
    _one_step(layer, x, 1, opt)                               # a support step: (0, 3) gets no gradient
    assert layer.weight[0, 3] == 0
    _one_step(layer, x, 2, opt)                               # a refresh: it gets one and enters
    assert layer.weight[0, 3] > 0.05
    assert int(torch.count_nonzero(layer.weight)) == 4 and opt.dw_stats.entered["refresh"] == 1
    assert opt.dw_stats.layer_refreshes_entered == 1


def test_a_candidate_enters_between_refreshes():
    layer, x = _constructed_layer(dense_every=8, candidates=1.0)
    opt = SparseAdamW([layer.weight], lr=0.001, backend="torch")     # too small a step to enter at the refresh
    _one_step(layer, x, 0, opt)
    assert layer.weight[0, 3] == 0 and 3 in layer.dw_policy.tracked.tolist()
    for g in opt.param_groups:
        g["lr"] = 0.1
    _one_step(layer, x, 1, opt)                               # tracked: computed on a support step, and enters
    assert layer.weight[0, 3] > 0.05 and opt.dw_stats.entered["support"] == 1


def _top_off_support(grad, support, c):
    """support + the c off-support entries of largest |grad| (ties to the lowest flat index)."""
    off = torch.ones(grad.numel(), dtype=torch.bool)
    off[support] = False
    off = off.nonzero().view(-1)
    picked = off[topk_mask_ref(grad.abs().reshape(-1)[off], c)]
    return set(support.tolist()) | set(picked.tolist())


def test_grad_accumulation_refresh_step_is_dense_on_every_micro_batch():
    model, _ = small_gpt(dense_every=2, candidates=0.5)
    opt = SparseAdamW(param_groups(model), lr=1e-3, backend="torch")
    micro_batches = [batch(10), batch(11)]
    wants = [dense_twin_grads(model, x, y) for x, y in micro_batches]
    layers = support_linears(model)
    assert begin_step(model, 0)
    for x, y in micro_batches:
        loss_of(model, x, y).backward()
        assert all(layer.dw_policy.computed is None for layer in layers.values())    # this micro-batch: dense
    total, support = {}, {}
    for name, layer in layers.items():
        total[name] = wants[0][f"{name}.weight"] + wants[1][f"{name}.weight"]
        torch.testing.assert_close(layer.weight.grad, total[name], rtol=1e-5, atol=1e-6)
        support[name] = layer.weight.detach().reshape(-1).nonzero().view(-1)
    opt.step()                                                # candidates from the step's whole gradient
    differs = False
    for name, layer in layers.items():
        c = int(0.5 * support[name].numel())
        assert set(layer.dw_policy.tracked.tolist()) == _top_off_support(total[name], support[name], c), name
        differs |= _top_off_support(wants[1][f"{name}.weight"], support[name], c) != _top_off_support(
            total[name], support[name], c)
    assert differs                                            # the last micro-batch alone picks other entries
    opt.zero_grad()
    assert not begin_step(model, 1)
    for x, y in micro_batches:                                # a support step: the same entries each time
        loss_of(model, x, y).backward()
        for layer in layers.values():
            assert torch.equal(layer.dw_policy.computed, layer.dw_policy.tracked)


def test_lazy_moments_stay_and_decay_moments_fade_for_untracked_entries():
    ends = {}
    for moments in ("lazy", "decay"):
        layer, x = _constructed_layer(dense_every=4)
        opt = SparseAdamW([layer.weight], lr=1e-3, backend="torch", dw_moments=moments)
        _one_step(layer, x, 0, opt)                           # refresh: (0, 3) gets a moment, too small to enter
        m0 = opt.state[layer.weight]["exp_avg"][0, 3].item()
        assert m0 != 0 and layer.weight[0, 3] == 0
        _one_step(layer, x, 1, opt)                           # a support step: (0, 3) is not tracked
        ends[moments] = (m0, opt.state[layer.weight]["exp_avg"][0, 3].item())
    assert ends["lazy"][1] == ends["lazy"][0]
    assert ends["decay"][1] == pytest.approx(0.9 * ends["decay"][0])


def test_tracked_rms_scale_is_over_the_computed_entries():
    layer, x = _constructed_layer(dense_every=4, candidates=1.0)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([0.5, 0.4, 0.3, 0.2])))
    opt = SparseAdamW([layer.weight], lr=1e-3, backend="torch", dw_rms="tracked")
    x = torch.ones(2, 4)
    _one_step(layer, x, 0, opt)
    tracked = layer.dw_policy.tracked
    stats = opt.dw_stats.row()
    assert stats["dw_refresh_steps"] == 1
    g = torch.zeros(4, 4)
    g[0, :] = -1.0                                            # d(-y[0, 0]) / dW: the first input row
    want_all = 1 / (g.norm() / 4 + 1e-5)
    want_tracked = 1 / (g.reshape(-1)[tracked].norm() / tracked.numel() ** 0.5 + 1e-5)
    assert stats["dw_scale_all_refresh"] == pytest.approx(float(want_all), rel=1e-5)
    assert stats["dw_scale_tracked_refresh"] == pytest.approx(float(want_tracked), rel=1e-5)
    assert stats["dw_scale_used_refresh"] == stats["dw_scale_tracked_refresh"]
    share = 1 - float(g.reshape(-1)[tracked].norm() ** 2 / g.norm() ** 2)
    assert stats["dw_offsupport_share_all"] == pytest.approx(share, abs=1e-6)
    item = AdamWTensor(param=layer.weight.data, grad=g, exp_avg=g, exp_avg_sq=g, step=1, lr=0.0, beta1=0.9,
                       beta2=0.95, eps=0.1, weight_decay=0.0)
    sq, n = rms_terms([layer.weight], [item]).tolist()          # one rank's part, for an all-reduce
    assert n == tracked.numel() and 1 / ((sq / n) ** 0.5 + 1e-5) == pytest.approx(float(want_tracked), rel=1e-6)


def test_config_fields_validate_and_round_trip():
    cfg = apply_overrides(get_preset("tiny"), ["sparsity.dw_mode=support", "sparsity.dense_every=4",
                                               "sparsity.candidates=2"])
    assert (cfg.sparsity.dw_mode, cfg.sparsity.dense_every, cfg.sparsity.candidates) == ("support", 4, 2.0)
    again = type(cfg).from_dict(json.loads(cfg.to_json()))
    assert again.sparsity == cfg.sparsity
    old = json.loads(cfg.to_json())
    for key in ("dw_mode", "dense_every", "candidates", "dw_moments", "dw_rms"):
        del old["sparsity"][key]                              # a config.json written before these fields
    assert type(cfg).from_dict(old).sparsity.dw_mode == "dense"
    for bad in ("sparsity.dw_mode=sparse", "sparsity.dense_every=0", "sparsity.candidates=-1",
                "sparsity.dw_moments=freeze", "sparsity.dw_rms=none"):
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[1]):
            apply_overrides(get_preset("tiny"), [bad])
    with pytest.raises(ConfigError, match="dense"):
        apply_overrides(get_preset("tiny"), ["sparsity.dense=true", "sparsity.dw_mode=support"])


def test_dw_state_round_trip():
    model, _ = small_gpt()
    begin_step(model, 0)
    x, y = batch(0)
    loss_of(model, x, y).backward()
    SparseAdamW(param_groups(model), lr=1e-3, backend="torch").step()
    state = dw_state(model)
    assert set(state) == {f"{n}.weight.dw_tracked" for n in support_linears(model)}
    fresh, _ = small_gpt()
    load_dw_state(fresh, state)
    for name, layer in support_linears(fresh).items():
        assert torch.equal(layer.dw_policy.tracked, state[f"{name}.weight.dw_tracked"])
    with pytest.raises(ConfigError, match="dw_tracked"):
        load_dw_state(fresh, {k: v + 10_000 for k, v in state.items()})


def _run_weights(out):
    return load_file(str(checkpoint_file(out, "model.safetensors")))


def test_resume_between_refreshes_ends_identical(corpus, tmp_path):
    def cfg():
        return micro(corpus, steps=12, dw_mode="support", dense_every=4, candidates=0.5)

    full = tmp_path / "full"
    train(cfg(), full, progress=False)
    saved = json.loads((full / "config.json").read_text())["sparsity"]
    assert (saved["dw_mode"], saved["dense_every"], saved["candidates"]) == ("support", 4, 0.5)
    part = tmp_path / "part"
    assert train(cfg(), part, progress=False, max_steps=6).step == 6      # stops between refreshes 4 and 8
    tracked = {k: v for k, v in load_file(str(checkpoint_file(part, "optim.safetensors"))).items()
               if k.endswith(".dw_tracked")}
    assert tracked
    lost = tmp_path / "lost"                                  # the same, resumed without the tracked sets
    train(cfg(), lost, progress=False, max_steps=6)
    optim = checkpoint_file(lost, "optim.safetensors")
    from safetensors import safe_open
    with safe_open(str(optim), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in load_file(str(optim)).items() if not k.endswith(".dw_tracked")}, str(optim),
              metadata=meta)
    train(cfg(), part, resume=True, progress=False)
    train(cfg(), lost, resume=True, progress=False)
    a, b, c = _run_weights(full), _run_weights(part), _run_weights(lost)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)        # the tracked sets are what makes it exact
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["dw_refresh_steps"] for r in rows) == 3 and sum(r["dw_support_steps"] for r in rows) == 9


@pytest.mark.parametrize("moments", ["lazy", "decay"])
def test_triton_backend_takes_the_same_support_steps(moments, monkeypatch):
    from sparseformer.kernels import available
    if available("cpu")["triton"] is not None:
        pytest.skip(available("cpu")["triton"])
    monkeypatch.setenv("SPARSEFORMER_SDD_METHOD", "sddmm")    # the Triton SDDMM, not the GEMM fallback
    runs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            SparseLinear(16, 24, k=96, protect=1, dw_mode="support", dense_every=2, candidates=0.5, backend=backend),
            torch.nn.ReLU(),
            SparseLinear(24, 8, k=48, dw_mode="support", dense_every=2, candidates=0.5, backend=backend))
        opt = SparseAdamW(net.parameters(), lr=2e-2, weight_decay=0.1, backend=backend, dw_moments=moments)
        g = torch.Generator().manual_seed(1)
        for step in range(4):
            begin_step(net, step)
            x, t = torch.randn(6, 16, generator=g), torch.randn(6, 8, generator=g)
            torch.nn.functional.mse_loss(net(x), t).backward()
            opt.step()
            opt.zero_grad()
        runs[backend] = [p.detach().clone() for p in net.parameters()]
    for a, b in zip(runs["torch"], runs["triton"]):
        assert torch.equal(a != 0, b != 0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
