"""The training step gives the same bytes at 1 and 2 CPU threads, op by op; the --deterministic switch; the
list of atomics in our kernels."""

import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparseformer.config import ModelConfig, SparsityConfig
from sparseformer.determinism import INTEGER_ATOMICS, ThreadAudit, deterministic_mode
from sparseformer.errors import ConfigError
from sparseformer.kernels.adamw import grad_rms_scale
from sparseformer.model import GPT
from sparseformer.sparsity.optimizer import SparseAdamW
from sparseformer.sparsity.params import configure, param_groups, write_ks
from sparseformer.train import _lm_loss

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _step_audit(density: float) -> ThreadAudit:
    """One SparseAdamW training step of a small model (its bigram-table gradient is past the size at which
    torch parallelises), every op rerun at 1 and 2 threads."""
    cfg = ModelConfig(vocab_size=512, n_layer=1, d_model=64, n_head=4, d_head=16, d_mlp=256, block_size=32,
                      afrac=0.25, bigram_table=True, learned_pos_emb=True)
    sc = SparsityConfig(weight_density=density, embed_density=min(1.0, 2 * density), protect_per_neuron=0)
    torch.manual_seed(0)
    model = GPT(cfg)
    configure(model, sc)
    write_ks(model, 10, 10, sc)
    opt = SparseAdamW(param_groups(model, weight_decay=0.1), lr=1e-2)
    x, y = torch.randint(512, (2, 8, 32), generator=torch.Generator().manual_seed(1))

    def step():
        loss = _lm_loss(model, x, y, nullcontext())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()                                   # projects the weights: the next step runs the sparse matmuls
    audit = ThreadAudit(threads=(2,), repeats=2)
    with audit:
        step()
    return audit


@pytest.mark.parametrize("density", [1 / 4, 1 / 512])      # masked dense, and the gather/index_add matmuls
def test_every_op_of_a_training_step_gives_the_same_bytes_at_1_and_2_threads(density, two_threads):
    audit = _step_audit(density)
    assert audit.calls["embedding_dense_backward.default"] >= 1 and audit.calls["_foreach_norm.Scalar"] >= 1
    assert (audit.calls["index_add_.default"] > 0) == (density < 1 / 256)     # the sparse matmul ran
    assert audit.mismatches == {}


def test_the_audit_sees_a_thread_dependent_op(two_threads):
    """A whole-tensor sum of a large tensor is split among the threads, so its rounding follows their number
    (for most data; these wide-ranged values differ in their last bits on the development machines)."""
    gen = torch.Generator().manual_seed(0)
    audit = ThreadAudit(threads=(2,))
    for _ in range(3):
        x = torch.randn(1_000_003, generator=gen) * torch.exp(4 * torch.randn(1_000_003, generator=gen))
        with audit:
            x.sum()
    assert "sum.default" in audit.mismatches


def test_embedding_backward_is_thread_independent_even_with_repeated_tokens(two_threads):
    """The bigram table's lookup: many tokens hitting the same rows, summed in the same order at any count."""
    table = torch.rand(512, 512, requires_grad=True)
    idx = torch.randint(8, (16, 64), generator=torch.Generator().manual_seed(0))
    grad = torch.randn(16, 64, 512, generator=torch.Generator().manual_seed(1))
    audit = ThreadAudit(threads=(2, 3), repeats=2)
    with audit:
        F.embedding(idx, table).backward(grad)
    assert audit.calls["embedding_dense_backward.default"] == 1 and audit.mismatches == {}
    by_embedding = table.grad.clone()
    table.grad = None
    torch.set_num_threads(1)
    table[idx].backward(grad)                # indexing, at the one thread count where it is ordered
    assert torch.equal(table.grad, by_embedding)


def test_cpu_dispatcher_never_picks_torch_sparse_csr():
    """torch.sparse CSR products give different bits at 1 and 2 threads (bench/results/determinism/)."""
    from sparseformer.kernels.spmm import rules
    for density in [2.0 ** -e for e in range(0, 14)]:
        assert rules.choose("torch", density, torch.float32) in ("dense", "coo")


def test_gradient_rms_is_the_same_at_any_thread_count(two_threads):
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(2048, 2048, generator=gen), torch.randn(100_003, generator=gen), torch.randn(7, generator=gen)]
    scales = []
    for n in (1, 2, 3, 4):
        torch.set_num_threads(n)
        scales.append(grad_rms_scale(grads))
    assert len(set(scales)) == 1


def test_deterministic_mode_restores_torch_settings_and_names_the_op():
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    with pytest.raises(ConfigError, match="--deterministic: some_op does not have a deterministic implementation"):
        with deterministic_mode(True):
            raise RuntimeError("some_op does not have a deterministic implementation, but you set ...")
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="unrelated"):
        with deterministic_mode(True):
            raise RuntimeError("unrelated")


def test_every_atomic_in_our_kernels_is_listed():
    """A new atomic must be looked at for determinism: an integer count may be listed in INTEGER_ATOMICS, a
    float accumulation needs a deterministic variant (docs/reproducibility.md)."""
    found = {}
    for path in sorted([*(ROOT / "kernels").rglob("*.py"), *(ROOT / "csrc").rglob("*.cu*")]):
        n = len(re.findall(r"\batomic_\w+\(|\batomic[A-Z]\w*\(", path.read_text()))
        if n:
            found[str(path.relative_to(ROOT))] = n
    assert found == INTEGER_ATOMICS
