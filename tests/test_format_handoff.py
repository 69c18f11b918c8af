"""SparseAdamW hands each layer whose plan reads a sparse format the format of its new support
(layers/linear.py `hand_off_formats`): the next forward plans with it instead of rebuilding it, training
gives the same bytes with and without the hand-off, and anything that may change the support drops it."""

from contextlib import nullcontext
from dataclasses import fields

import pytest
import torch

import sparseformer.kernels.spmm.plan as plan_mod
import sparseformer.sparsity.optimizer as optim_mod
from sparseformer.config import ModelConfig, SparsityConfig
from sparseformer.kernels import SparseWeight, compact
from sparseformer.layers import SparseLinear
from sparseformer.model import GPT
from sparseformer.sparsity.optimizer import SparseAdamW
from sparseformer.sparsity.params import configure, param_groups, write_ks
from sparseformer.train import _lm_loss

DEV = "cuda" if torch.cuda.is_available() else "cpu"      # the Triton layers: CPU tensors only when interpreted


@pytest.fixture
def compacts(monkeypatch):
    """Counts the formats the planner rebuilds from a weight."""
    calls = []

    def counting(w, *a, **kw):
        calls.append(tuple(w.shape))
        return compact(w, *a, **kw)

    monkeypatch.setattr(plan_mod, "compact", counting)
    return calls


def assert_same(sw, ref, ell=()):
    """Every index tensor, count and asked-for padded rows of the handed format equal compact()'s."""
    for f in fields(SparseWeight):
        a, b = getattr(sw, f.name), getattr(ref, f.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), f.name
        elif not f.name.startswith("_"):
            assert a == b, f.name
    for o in ell:
        assert all(torch.equal(getattr(sw._ell[o], f), getattr(ref.ell(o), f)) for f in ("col", "src", "row_len"))


def _step(layer, opt, seed):
    x = torch.randn(16, layer.in_features, generator=torch.Generator().manual_seed(seed)).to(layer.weight.device)
    y = layer(x)
    y.square().sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return y


def test_the_forward_after_a_step_reads_the_handed_format(compacts):
    torch.manual_seed(0)
    layer = SparseLinear(64, 48, k=10)            # density 1/307: the CPU plans the "coo" product (CSR format)
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    assert compacts == [(48, 64)]                 # the first forward had nothing handed over
    handed = layer.handed_format()
    assert handed is not None
    assert_same(handed, compact(layer.weight))
    _step(layer, opt, 2)
    assert compacts == [(48, 64)]                 # ... the second read the handed one
    x = torch.randn(16, 64)
    with torch.no_grad():
        y = layer(x)
    assert compacts == [(48, 64)] and layer._plan.fwd == "coo" and layer._plan.sw is layer.handed_format()
    torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_masked_dense_layers_get_no_format(monkeypatch):
    emitted = []
    real = optim_mod.hand_off_formats
    monkeypatch.setattr(optim_mod, "hand_off_formats", lambda ps, caps, backend=None: emitted.append(
        real(ps, caps, backend=backend)))
    layer = SparseLinear(32, 16, k=256)            # density 1/2: masked dense reads no format
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    assert emitted == [0] and layer.handed_format() is None


def test_a_changed_weight_or_refresh_drops_the_handed_format(compacts):
    layer = SparseLinear(64, 48, k=10)
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    assert layer.handed_format() is not None
    with torch.no_grad():
        layer.weight[0, 0] = 1.0                  # bumps the version counter: the support may have changed
    assert layer.handed_format() is None
    _step(layer, opt, 2)
    assert len(compacts) == 2
    layer.refresh()
    assert layer.handed_format() is None


def test_padded_rows_come_with_the_format_when_the_plan_reads_them():
    layer = SparseLinear(40, 24, k=30, method="ell", backend="triton", bias=False).to(DEV)
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    handed = layer.handed_format()
    assert layer.format_request() == (False, True)
    assert_same(handed, compact(layer.weight), (False, True))
    assert set(handed._ell) == {False, True}


def _train(emit: bool, steps: int = 4):
    cfg = ModelConfig(vocab_size=128, n_layer=1, d_model=64, n_head=4, d_head=16, d_mlp=256, block_size=16,
                      afrac=0.25)
    sc = SparsityConfig(weight_density=1 / 512, embed_density=1 / 64, protect_per_neuron=1)
    torch.manual_seed(0)
    model = GPT(cfg)
    configure(model, sc)
    opt = SparseAdamW(param_groups(model, weight_decay=0.1), lr=1e-2, emit_formats=emit)
    data = torch.randint(128, (steps, 2, 4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(steps):
        write_ks(model, step, steps, sc)
        loss = _lm_loss(model, data[step, 0], data[step, 1], nullcontext())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), {n: p.detach().clone() for n, p in model.named_parameters()}


def test_training_gives_the_same_bytes_with_and_without_the_hand_off(compacts):
    losses, params = _train(emit=True)
    with_emit = len(compacts)
    compacts.clear()
    losses0, params0 = _train(emit=False)
    assert with_emit < len(compacts)              # the hand-off replaced rebuilds ...
    assert torch.equal(losses, losses0)           # ... and changed no bit
    assert params.keys() == params0.keys()
    for n in params:
        assert torch.equal(params[n], params0[n]), n


def _fwd_bwd(layer, x):
    """Output, input gradient and weight gradient of one forward and backward (the layer's grads cleared)."""
    x = x.to(layer.weight.device, copy=True).requires_grad_(True)
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device))
    out = y.detach(), x.grad, layer.weight.grad.clone()
    layer.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("kw", [dict(k=10), dict(k=30, method="ell", backend="triton")], ids=["coo", "ell"])
def test_the_handed_format_gives_the_bytes_of_a_fresh_one(compacts, kw):
    torch.manual_seed(3)
    layer = SparseLinear(64, 48, **kw).to(DEV if "backend" in kw else "cpu")
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    handed = _fwd_bwd(layer, x)
    assert len(compacts) == 1 and layer._plan.sw is layer.handed_format()        # no rebuild ...
    layer.refresh()
    fresh = _fwd_bwd(layer, x)
    assert len(compacts) == 2 and layer.handed_format() is None                 # ... here one
    for a, b in zip(handed, fresh):
        assert torch.equal(a, b)


def _other_support(layer, seed):
    """A weight of the layer's shape holding k entries at other places than the layer's."""
    w = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(seed))
    w[layer.weight != 0] = 0
    keep = w.abs().flatten().topk(layer.k).indices
    return torch.zeros(w.numel()).index_copy_(0, keep, w.flatten()[keep]).view_as(w)


@pytest.mark.parametrize("change", ["other optimizer", "load_state_dict", "new storage"])
def test_a_weight_changed_by_other_means_is_not_read_through_a_stale_format(compacts, change):
    layer = SparseLinear(64, 48, k=10)
    opt = SparseAdamW(layer.parameters(), lr=1e-2)
    _step(layer, opt, 1)
    stale = layer.handed_format()
    assert stale is not None
    new = _other_support(layer, 5)
    if change == "other optimizer":                # an in-place step of another optimizer on the same weight
        layer.weight.grad = layer.weight.detach() - new
        torch.optim.SGD([layer.weight], lr=1.0).step()
        layer.weight.grad = None
    elif change == "load_state_dict":
        layer.load_state_dict({"weight": new, "bias": layer.bias.detach()})
    else:
        layer.weight.data = new.clone()
    assert torch.equal(layer.weight, new)
    x = torch.randn(16, 64)
    with torch.no_grad():
        y = layer(x)
    assert layer.handed_format() is None and layer._plan.sw is not stale
    assert len(compacts) == 2 and layer._plan.fwd == "coo"      # a format rebuilt from the new weight
    torch.testing.assert_close(y, torch.nn.functional.linear(x, new, layer.bias))
    assert torch.equal(layer._plan.sw.col, compact(new).col)
