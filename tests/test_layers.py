"""SparseLinear, sparsify/densify and param_groups, on CPU through the torch paths."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseformer.errors import ConfigError
from sparseformer.layers import SparseLinear, densify, refresh, sparse_layers, sparsify
from sparseformer.sparsity.optimizer import SparseAdamW
from sparseformer.sparsity.params import param_groups


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8, bias=False))


def test_sparse_linear_is_a_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    sl = SparseLinear(12, 7, k=20)
    assert isinstance(sl, nn.Linear)
    assert sl.state_dict().keys() == lin.state_dict().keys()
    assert int(torch.count_nonzero(sl.weight)) == 20            # projected at construction
    sl.load_state_dict(lin.state_dict())                         # nn.Linear checkpoints load as is
    x = torch.randn(3, 4, 12)
    assert torch.allclose(sl(x), lin(x), atol=1e-6)
    assert "k=20" in repr(sl) and "dw_mode='dense'" in repr(sl)
    dense = SparseLinear(12, 7)                                  # k=None: dense, like nn.Linear
    assert int(torch.count_nonzero(dense.weight)) == 84 and dense.k is None


@pytest.mark.parametrize("method", ["dense", "csr", "coo"])
def test_forward_and_grads_match_masked_dense(method):
    torch.manual_seed(1)
    sl = SparseLinear(24, 10, k=30, method=method, backend="torch")
    ref = nn.Linear(24, 10)
    ref.load_state_dict(sl.state_dict())
    x = torch.randn(2, 5, 24)
    y, yr = sl(x), ref(x)
    assert torch.allclose(y, yr, atol=1e-5)
    y.square().sum().backward()
    yr.square().sum().backward()
    assert torch.allclose(sl.weight.grad, ref.weight.grad, atol=1e-4)   # dense dW: zeros get gradients
    assert bool((sl.weight.grad[sl.weight == 0] != 0).any())
    assert torch.allclose(sl.bias.grad, ref.bias.grad, atol=1e-4)


def test_default_refresh_follows_every_weight_change():
    torch.manual_seed(2)
    sl = SparseLinear(8, 6, k=10, method="coo", backend="torch")
    x = torch.randn(4, 8)
    sl(x)
    outside = (sl.weight == 0).nonzero()[0].tolist()
    sl.weight.data[outside[0], outside[1]] = 1.0     # a .data write (as SparseAdamW makes): no version bump
    assert torch.allclose(sl(x), F.linear(x, sl.weight, sl.bias), atol=1e-6)


def test_version_refresh_follows_in_place_changes_and_data_writes_need_refresh():
    torch.manual_seed(2)
    sl = SparseLinear(8, 6, k=10, method="coo", backend="torch", refresh="version")
    x = torch.randn(4, 8)
    sl(x)
    outside = (sl.weight == 0).nonzero()[0].tolist()
    with torch.no_grad():
        sl.weight[outside[0], outside[1]] = 2.0   # in place on the Parameter: version moves, support grows
    assert torch.allclose(sl(x), F.linear(x, sl.weight, sl.bias), atol=1e-6)
    outside = (sl.weight == 0).nonzero()[0].tolist()
    sl.weight.data[outside[0], outside[1]] = 1.0  # .data write: version unchanged, the stale support is kept ...
    assert not torch.allclose(sl(x), F.linear(x, sl.weight, sl.bias), atol=1e-6)
    sl.refresh()                                  # ... until refresh()
    assert torch.allclose(sl(x), F.linear(x, sl.weight, sl.bias), atol=1e-6)
    torch.autograd.graph.increment_version(sl.weight)   # or a version bump
    sl.weight.data.zero_()
    torch.autograd.graph.increment_version(sl.weight)
    assert torch.allclose(sl(x), sl.bias.expand(4, 6))
    with pytest.raises(ConfigError, match="refresh"):
        SparseLinear(3, 3, refresh="never")


def test_sparsify_swaps_in_place_and_densify_undoes_it(caplog):
    model = _mlp()
    w0, b0 = model[0].weight, model[0].bias
    keys = model.state_dict().keys()
    with caplog.at_level(logging.INFO, logger="sparseformer.layers"):
        out = sparsify(model, 1 / 8)
    assert out is model
    assert "2 modules sparse" in caplog.text and "0 (SparseLinear 32x16) k=64" in caplog.text
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert model[0].weight is w0 and model[0].bias is b0         # same Parameter objects
    assert model.state_dict().keys() == keys
    assert int(torch.count_nonzero(model[0].weight)) == 16 * 32 // 8
    assert int(torch.count_nonzero(model[2].weight)) == 32 * 8 // 8
    before = copy.deepcopy(model.state_dict())
    sparsify(model, 1 / 2)                                       # already sparse: nothing happens
    assert model[0].k == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    densify(model)
    assert type(model[0]) is nn.Linear and model[0].weight is w0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sparsify_include_exclude_and_typos():
    model = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    sparsify(model, 0.25, include=r"^linear", exclude=r"linear2")
    assert set(sparse_layers(model)) == {"linear1"}
    with pytest.raises(ConfigError, match="matches no module"):
        sparsify(model, 0.25, include=r"lineer")
    with pytest.raises(ConfigError, match="outside"):
        sparsify(model, 0.0)
    with pytest.raises(ConfigError, match="not a valid regex"):
        sparsify(model, 0.5, exclude="(")
    with pytest.raises(ConfigError, match="protect_per_row"):
        sparsify(nn.Sequential(nn.Linear(10, 10)), 0.1, protect_per_row=2)
    with pytest.raises(ConfigError, match="itself a Linear"):
        sparsify(nn.Linear(3, 3), 0.5)


def test_protection_keeps_j_per_row_and_shared_modules_swap_once():
    shared = nn.Linear(20, 20)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(20, 20), shared)
    sparsify(model, 0.2, protect_per_row=2)
    assert model[0] is model[3]
    assert ((model[0].weight != 0).sum(1) >= 2).all()
    assert int(torch.count_nonzero(model[0].weight)) == int(0.2 * 400)


def test_param_groups_feed_sparse_adamw():
    model = _mlp(3)
    sparsify(model, 1 / 4, protect_per_row=1)
    groups = param_groups(model, lr=1e-2, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert [p.ndim for p in by_name["decay"]["params"]] == [2, 2] and by_name["decay"]["weight_decay"] == 0.1
    assert by_name["no_decay"]["weight_decay"] == 0.0 and "k" not in by_name["no_decay"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert (model[0].k, model[0].protect, model[2].k) == (128, (1, "rows"), 64)   # the layers hold k
    opt = SparseAdamW(groups)
    x = torch.randn(32, 16)
    for _ in range(3):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        for lay in sparse_layers(model).values():
            assert int(torch.count_nonzero(lay.weight)) == lay.k


def _train(model, steps, x, target, groups_fn):
    opt = SparseAdamW(groups_fn(model), lr=3e-3, weight_decay=0.1)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["coo", "csr"])
def test_foreign_transformer_trains_like_masked_dense(method):
    """sparsify a model we did not write (torch's TransformerEncoderLayer stack), train it a few steps with
    SparseAdamW, and compare with the same model trained the masked-dense way (nn.Linear, same groups)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    base = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x, target = torch.randn(4, 6, 32), torch.randn(4, 6, 32)
    sparse = sparsify(copy.deepcopy(base), 1 / 16, method=method, backend="torch")
    masked = copy.deepcopy(sparse)
    ks = {n: lay.k for n, lay in sparse_layers(masked).items()}
    densify(masked)                                              # plain nn.Linear on the same masked weights

    def masked_groups(model):
        groups, sparse_ids = [], set()
        for name, k in ks.items():
            w = model.get_submodule(name).weight
            sparse_ids.add(id(w))
            groups.append(dict(params=[w], k=k, name=name, weight_decay=0.1))
        rest = [p for p in model.parameters() if id(p) not in sparse_ids]
        return groups + [dict(params=rest, k=None, weight_decay=0.0)]

    losses_sparse = _train(sparse, 5, x, target, lambda m: param_groups(m, weight_decay=0.1))
    losses_masked = _train(masked, 5, x, target, masked_groups)
    assert losses_sparse[-1] < losses_sparse[0]
    assert losses_sparse == pytest.approx(losses_masked, rel=1e-4, abs=1e-5)
    for name, lay in sparse_layers(sparse).items():
        assert int(torch.count_nonzero(lay.weight)) == lay.k == ks[name]
        assert lay.density == pytest.approx(lay.k / lay.weight.numel())
        assert torch.allclose(lay.weight, masked.get_submodule(name).weight, atol=1e-4)
    refresh(sparse)


def test_support_dw_mode_through_the_layer():
    torch.manual_seed(4)
    sl = SparseLinear(10, 12, k=15, dw_mode="support", method="coo", backend="torch")
    x = torch.randn(6, 10)
    sl(x).sum().backward()
    assert bool((sl.weight.grad[sl.weight == 0] == 0).all())
    assert bool((sl.weight.grad[sl.weight != 0] != 0).any())
    with pytest.raises(ConfigError, match="dw_mode"):
        SparseLinear(3, 3, dw_mode="none")


# ---------------------------------------------------------------- who owns k (the layers), one list of sparse tensors

def _tiny_gpt(**overrides):
    from sparseformer.config import ModelConfig
    from sparseformer.model import GPT
    torch.manual_seed(0)
    cfg = dict(vocab_size=32, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=32, block_size=8, bias=True,
               learned_pos_emb=True)
    return GPT(ModelConfig(**{**cfg, **overrides}))


def test_gpt_declares_its_sparse_tensors_by_kind():
    from sparseformer.layers import sparse_tensors
    from sparseformer.model import param_kind
    model = _tiny_gpt()
    assert sparse_tensors(model) == []                       # declared, not sparse until configured
    declared = {t.name: t for t in sparse_tensors(model, declared=True)}
    kinds = {n: t.kind for n, t in declared.items()}
    assert kinds["transformer.wte.weight"] == kinds["lm_head.weight"] == "embed"
    assert kinds["transformer.wpe.weight"] == kinds["transformer.h.1.mlp.c_fc.weight"] == "weight"
    assert kinds["transformer.h.0.attn.c_attn.bias"] == "bias"
    assert declared["transformer.h.0.attn.c_proj.weight"].owner.neuron_axis == "cols"
    assert {n for n, _ in model.named_parameters() if param_kind(n)} == set(declared)
    assert all(param_kind(n) == k for n, k in kinds.items())
    assert param_kind("transformer.h.7.mlp.c_fc.weight") == "weight" and param_kind("bigram_table") is None


def test_schedule_writes_k_into_the_layers_and_sparse_adamw_reads_it():
    from sparseformer.config import SparsityConfig
    from sparseformer.layers import sparse_tensors
    from sparseformer.sparsity.params import configure, write_ks
    model = _tiny_gpt()
    cfg = SparsityConfig(weight_density=1 / 4, embed_density=1 / 2, protect_per_neuron=1)
    tensors = configure(model, cfg)
    assert {t.kind for t in tensors} == {"weight", "embed", "bias"} and all(t.k == t.param.numel() for t in tensors)
    assert model.transformer.h[0].mlp.c_fc.protect == (1, "rows")
    assert model.transformer.h[0].mlp.c_proj.protect == (1, "cols") and model.lm_head.protect is None
    ks = write_ks(model, 10, 10, cfg)                         # the end of the schedule: final densities
    assert ks["transformer.h.0.mlp.c_fc.weight"] == 16 * 32 // 4 == model.transformer.h[0].mlp.c_fc.k
    assert ks["transformer.wte.weight"] == 32 * 16 // 2 == model.transformer.wte.k
    opt = SparseAdamW(model.parameters(), lr=1e-2)           # no groups, no k: the layers have it
    idx = torch.randint(32, (2, 8))
    for _ in range(2):
        model(idx).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        for t in sparse_tensors(model):
            assert int(torch.count_nonzero(t.param)) == t.k, t.name
    assert int(torch.count_nonzero(model.transformer.ln_f.weight)) == 16      # never sparse
    assert configure(model, SparsityConfig(dense=True)) == []


def test_owner_is_found_from_the_parameter_after_copies_and_moves():
    from sparseformer.layers import owner_of
    sl = SparseLinear(6, 4, k=5)
    assert owner_of(sl.weight) == (sl, "weight") and owner_of(sl.bias) == (sl, "bias")
    twin = copy.deepcopy(sl)
    assert owner_of(twin.weight) == (twin, "weight") and owner_of(sl.weight)[0] is sl
    sl.weight = nn.Parameter(torch.zeros(4, 6))               # a new Parameter object
    assert owner_of(sl.weight) == (sl, "weight")
    assert owner_of(nn.Linear(2, 2).weight) is None
    model = nn.Sequential(nn.Linear(4, 4))
    sparsify(model, 0.5)
    w = model[0].weight
    densify(model)
    assert owner_of(w) is None                               # the plain module owns no k
    with pytest.raises(ConfigError, match="outside"):
        SparseLinear(3, 3, k=10)
