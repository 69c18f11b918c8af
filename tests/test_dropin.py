"""sparsify as a drop-in for third-party models: Hugging Face GPT-2 (Conv1D), Llama and BERT built from
tiny configs offline, trained with torch.optim.AdamW, torch.optim.SGD and SparseAdamW(model.parameters());
state dicts, tied weights, errors, torch.compile and DDP."""

import copy
import logging
import socket

import pytest
import torch
from torch import nn

from sparseformer.errors import ConfigError
from sparseformer.layers import (SparseLinear, densify, register_adapter, sparse_layers, sparse_tensors, sparsify,
                                 summary)
from sparseformer.layers import adapters
from sparseformer.sparsity.optimizer import SparseAdamW

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
transformers.logging.set_verbosity_error()

V = 64          # vocabulary of the tiny models


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=16, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=V, max_position_embeddings=16, bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def bert():
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                  vocab_size=V, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM(cfg)


ARCHS = {"gpt2": gpt2, "llama": llama, "bert": bert}
# per architecture: the sparse modules sparsify makes (tied output heads are skipped by default)
EXPECTED = {"gpt2": ("Conv1D", 8), "llama": ("Linear", 15), "bert": ("Linear", 13)}
OPTIMIZERS = {"AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
              "SGD": lambda ps: torch.optim.SGD(ps, lr=0.5),
              "SparseAdamW": lambda ps: SparseAdamW(ps, lr=1e-2)}


def _build(arch, seed=0):
    torch.manual_seed(seed)
    return ARCHS[arch]()


def _ids(seed=1):
    return torch.randint(V, (4, 12), generator=torch.Generator().manual_seed(seed))


def _assert_exact_k(model):
    tensors = sparse_tensors(model)
    assert tensors
    for t in tensors:
        assert int(torch.count_nonzero(t.param)) == t.k, t.name


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_hf_model_trains_at_exact_k_under_any_optimizer(arch, opt_name):
    model = _build(arch)
    sparsify(model, 1 / 16)
    kind, count = EXPECTED[arch]
    rows = summary(model)
    assert len(rows) == count and all(r["type"].endswith(kind) for r in rows)
    assert all(r["k"] == int(r["shape"][0] * r["shape"][1] / 16) for r in rows)
    _assert_exact_k(model)
    opt = OPTIMIZERS[opt_name](model.parameters())
    ids, losses = _ids(), []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        _assert_exact_k(model)                               # after every step
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("density", [1 / 16, 1 / 64, 1 / 1024])      # masked dense, csr, coo on the CPU
@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_and_input_gradient_equal_plain_modules_on_the_masked_weights(arch, density):
    model = _build(arch).eval()
    sparsify(model, density)
    plain = densify(copy.deepcopy(model))                   # nn.Linear / Conv1D on the same masked weights
    assert not sparse_layers(plain)
    emb = model.get_input_embeddings()(_ids()).detach()
    outs = []
    for m in (model, plain):
        x = emb.clone().requires_grad_()
        logits = m(inputs_embeds=x).logits
        logits.square().mean().backward()
        outs.append((logits.detach(), x.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)


def test_conv1d_keeps_its_storage_and_protects_output_neurons():
    model = _build("gpt2")
    c_attn = model.transformer.h[0].attn.c_attn
    w = c_attn.weight
    sparsify(model, 1 / 16, protect_per_row=1)
    assert model.transformer.h[0].attn.c_attn is c_attn and c_attn.weight is w      # same module, same tensor
    assert isinstance(c_attn, transformers.pytorch_utils.Conv1D) and tuple(w.shape) == (32, 96)   # [in, out]
    assert c_attn.protect == (1, "cols") and bool(((w != 0).sum(0) >= 1).all())    # every output neuron
    assert "k=192" in repr(c_attn)


def test_tied_weights_are_skipped_and_reported_or_sparsified_when_asked(caplog):
    model = _build("gpt2")
    with caplog.at_level(logging.INFO, logger="sparseformer.layers.sparsify"):
        sparsify(model, 1 / 16)
    assert "skipped lm_head: its weight is tied to transformer.wte" in caplog.text
    assert "lm_head" not in sparse_layers(model) and "transformer.h.0.mlp.c_fc (SparseConv1D 32x128) k=256" \
        in caplog.text
    assert int(torch.count_nonzero(model.transformer.wte.weight)) == V * 32           # the embedding stays dense
    tied = _build("gpt2")
    sparsify(tied, 1 / 16, tied=True)
    assert isinstance(tied.lm_head, SparseLinear) and tied.lm_head.weight is tied.transformer.wte.weight
    assert int(torch.count_nonzero(tied.transformer.wte.weight)) == V * 32 // 16


def test_state_dicts_round_trip_between_sparse_fresh_and_plain_models():
    sparse = sparsify(_build("gpt2", seed=0), 1 / 16)
    state = copy.deepcopy(sparse.state_dict())
    ids = _ids()
    want = sparse(input_ids=ids).logits
    fresh = sparsify(_build("gpt2", seed=5), 1 / 16)           # another init, then the saved weights
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(input_ids=ids).logits, want)
    plain = _build("gpt2", seed=7)
    plain.load_state_dict(state)                                # the plain model reads it as is
    assert set(plain.state_dict()) == set(state)
    torch.testing.assert_close(plain(input_ids=ids).logits, want)
    sparsify(plain, 1 / 16)                                     # ... and back: already at k, unchanged
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in state.items())
    densify(sparse)                                             # the inverse of sparsify
    c_fc = sparse.transformer.h[0].mlp.c_fc
    assert type(c_fc) is transformers.pytorch_utils.Conv1D and not hasattr(c_fc, "k")
    assert all(torch.equal(sparse.state_dict()[k], v) for k, v in state.items())


def test_one_clear_error_for_each_mistake():
    model = _build("gpt2")
    with pytest.raises(ConfigError, match="matches no module"):
        sparsify(model, 1 / 16, include=r"mpl\.")
    with pytest.raises(ConfigError, match="'transformer.wte' is a Embedding, which sparsify does not convert"):
        sparsify(model, 1 / 16, include=r"transformer\.wte")
    with pytest.raises(ConfigError, match=r"k=100000 for 'transformer.h.0.attn.c_attn' is outside \[0, 3072\]"):
        sparsify(model, 1 / 16, overrides={r"h\.0\.attn\.c_attn": 100_000})
    with pytest.raises(ConfigError, match="density=1.5"):
        sparsify(model, 1 / 16, overrides={r"c_fc": 1.5})
    with pytest.raises(ConfigError, match="nothing to sparsify"):
        sparsify(nn.Sequential(nn.Embedding(4, 4), nn.ReLU()), 1 / 16)
    with pytest.raises(ConfigError, match="outside"):
        SparseLinear(4, 4).set_budget("weight", 17)
    assert not sparse_layers(model)                              # no error left a half-converted model


def test_a_registered_adapter_covers_any_2d_weight_module():
    class Mixer(nn.Module):                                     # y = x W + b with W stored [in, out]
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 6))
            self.bias = nn.Parameter(torch.zeros(6))

        def forward(self, x):
            return x @ self.weight + self.bias

    model = nn.Sequential(Mixer(), nn.ReLU())
    with pytest.raises(ConfigError, match="nothing to sparsify"):
        sparsify(model, 0.25)
    adapter = register_adapter(Mixer, transposed=True)
    try:
        x = torch.randn(3, 8)
        plain_out = model[0](x)
        sparsify(model, 0.25, include=r"^0$", project=False)
        assert isinstance(model[0], Mixer) and type(model[0]).__name__ == "SparseMixer" and model[0].k == 12
        torch.testing.assert_close(model[0](x), plain_out)      # the sparse matmuls on the [out, in] view
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x).sum().backward()
        opt.step()
        assert int(torch.count_nonzero(model[0].weight)) == 12
        densify(model)
        assert type(model[0]) is Mixer
    finally:
        adapters.ADAPTERS.remove(adapter)


@pytest.mark.parametrize("density", [1.0, 1 / 16, 1 / 64, 1 / 1024])   # dense, dense, csr, coo on the CPU
def test_compiled_model_has_no_graph_break_and_matches_eager(density):
    """fullgraph=True fails on any graph break; the aot_eager backend traces forward and backward through
    dynamo and AOTAutograd (the fake implementations of the custom ops) without compiling C++."""
    torch.manual_seed(0)
    model = sparsify(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)), density)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 32)
    grads = []
    for m in (compiled, model):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        grads.append((y.detach(), xi.grad, model[0].weight.grad.clone()))
        model.zero_grad()
    for got, want in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model[0].set_budget("weight", model[0].k // 2 or 1)          # a new k: no recompile needed, same results
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def _train_replica(model, wrapped, rank, world, dist) -> dict:
    """Three AdamW steps on this rank's own batch; exact k (of the whole tensor) after each, and whether
    every rank ends with the same weights."""
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    ids, losses, exact = _ids(seed=10 + rank), [], []
    for _ in range(3):
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        full = [t.param.full_tensor() if hasattr(t.param, "full_tensor") else t.param for t in sparse_tensors(model)]
        tensors = sparse_tensors(model)
        exact.append(bool(full) and all(int(torch.count_nonzero(p)) == t.k for p, t in zip(full, tensors)))
    flat = torch.cat([(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten()
                      for p in model.parameters()])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    return dict(losses=losses, exact=exact, same=all(torch.equal(every[0], f) for f in every))


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results = {}
        model = sparsify(_build("gpt2"), 1 / 16)
        results["ddp"] = _train_replica(model, DDP(model), rank, world, dist)
        model = sparsify(_build("gpt2"), 1 / 16)
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)                           # parameters become sharded DTensors
        results["fsdp2"] = _train_replica(model, model, rank, world, dist)
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")
def test_sparsified_hf_model_trains_under_ddp_and_fsdp2_with_gloo(tmp_path):
    """Two CPU processes (torch.multiprocessing + gloo, as torchrun would start them), GPT-2 sparsified at
    1/16 and trained with torch.optim.AdamW under DDP, then under FSDP2: exact k of every whole tensor on
    every rank after every step, and the ranks agree on the weights."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_distributed_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for mode in ("ddp", "fsdp2"):
        for r in results:
            assert all(r[mode]["exact"]) and r[mode]["same"] and r[mode]["losses"][-1] < r[mode]["losses"][0], mode
        assert results[0][mode]["losses"] != results[1][mode]["losses"]       # different data, one model


def test_sparse_adamw_projects_once_and_other_optimizers_through_the_hook(monkeypatch):
    from sparseformer.layers import owner
    calls = []
    real = owner.project_owned_
    monkeypatch.setattr(owner, "project_owned_", lambda ts: calls.append(len(ts)) or real(ts))
    model = sparsify(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), 0.25)
    x = torch.randn(5, 8)
    optimizers = ((SparseAdamW(model.parameters(), lr=0.1), []), (torch.optim.SGD(model.parameters(), lr=0.1), [2]))
    for opt, want in optimizers:
        calls.clear()
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        assert calls == want                                      # SparseAdamW projected inside its own step
        _assert_exact_k(model)
