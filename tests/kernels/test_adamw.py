"""The fused SparseAdamW step (kernels.sparse_adamw_step_) of every backend against the torch reference:
same survivors, values within float rounding, over several steps (so the warm-started histogram fused into
the Adam pass is used), with dense and projected tensors, row/column protection and weight decay.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseformer.kernels import TopkState, available, sparse_adamw_step_
from sparseformer.kernels.adamw import AdamWTensor

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
MAX_D = 160 if GPU else 24
EXAMPLES = 40 if GPU else 6


def skip_unless_available(backend):
    reason = available(DEV)[backend]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def make_params(shapes, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 0.05).to(dtype).to(DEV) for s in shapes]


def items_for(params, states, grads, step, specs, lr):
    out = []
    for p, (m, v), g, (k, prot, wd) in zip(params, states, grads, specs):
        out.append(AdamWTensor(param=p, grad=g, exp_avg=m, exp_avg_sq=v, step=step, lr=lr, beta1=0.9,
                               beta2=0.95, eps=0.1, weight_decay=wd, k=k, protect=prot, name=f"t{len(out)}"))
    return out


def assert_same_step(ref, got, dtype):
    """Equal survivors, except where the two values sit within rounding of each other at the threshold."""
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    for a, b in zip(ref, got):
        a, b = a.float().cpu(), b.float().cpu()
        diff = (a != 0) != (b != 0)
        if diff.any():
            kept = torch.cat([a[a != 0].abs(), b[b != 0].abs()])
            thr = kept.min()
            near = (torch.maximum(a.abs(), b.abs())[diff] - thr).abs() <= 4 * tol["rtol"] * thr + tol["atol"]
            assert near.all(), f"survivors differ away from the threshold at {diff.nonzero()[:5].tolist()}"
            a, b = a.clone(), b.clone()
            a[diff] = b[diff] = 0
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_fused_step_matches_reference(backend, data):
    skip_unless_available(backend)
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")
    n_t = data.draw(st.integers(1, 4), label="n_tensors")
    shapes, specs = [], []
    for _ in range(n_t):
        r, c = data.draw(st.integers(1, MAX_D)), data.draw(st.integers(1, MAX_D))
        shape = data.draw(st.sampled_from([(r, c), (r * c,)]))
        n = r * c
        k = data.draw(st.one_of(st.none(), st.integers(0, n)))
        prot = data.draw(st.sampled_from([None, (1, "rows"), (2, "cols")])) if len(shape) == 2 and k else None
        wd = data.draw(st.sampled_from([0.0, 0.1]))
        shapes.append(shape); specs.append((k, prot, wd))
    seed = data.draw(st.integers(0, 1000))
    ref_p, got_p = make_params(shapes, seed, dtype), make_params(shapes, seed, dtype)
    ref_s = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref_p]
    got_s = [(torch.zeros_like(p), torch.zeros_like(p)) for p in got_p]
    state = TopkState()
    g = torch.Generator().manual_seed(seed + 1)
    for step in range(1, 4):
        grads = [torch.randn(p.shape, generator=g).to(dtype).to(DEV) for p in ref_p]
        sparse_adamw_step_(items_for(ref_p, ref_s, grads, step, specs, 1e-2), backend="torch")
        sparse_adamw_step_(items_for(got_p, got_s, [x.clone() for x in grads], step, specs, 1e-2),
                           backend=backend, state=state)
        assert_same_step(ref_p, got_p, dtype)
        for (m1, v1), (m2, v2) in zip(ref_s, got_s):
            tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-4)
            torch.testing.assert_close(m1, m2, **tol)
            torch.testing.assert_close(v1, v2, **tol)
    for p, (k, _, _) in zip(got_p, specs):
        if k is not None:
            assert int((p != 0).sum()) <= k


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
def test_projection_count_and_decay_order(backend):
    """Exactly k survivors (all nonzero here), and decay applied after the projection."""
    skip_unless_available(backend)
    p = make_params([(16, 24)], 3, torch.float32)[0]
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(4)).to(DEV)
    it = AdamWTensor(param=p, grad=grad, exp_avg=m, exp_avg_sq=v, step=1, lr=0.05, beta1=0.9, beta2=0.95,
                     eps=0.1, weight_decay=0.5, k=40, protect=(2, "rows"), name="w")
    sparse_adamw_step_([it], backend=backend, state=TopkState())
    assert int((p != 0).sum()) == 40
    assert bool(((p != 0).sum(1) >= 2).all())           # every row keeps its protected top-2


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_whole_blocks_and_warm_histogram(backend):
    """Tensors spanning several whole blocks (unmasked vector path), three steps so the histogram is fused."""
    skip_unless_available(backend)
    shapes, specs = [(48, 50), (3000,), (50, 48)], [(150, None, 0.1), (40, None, 0.0), (None, None, 0.1)]
    ref_p, got_p = make_params(shapes, 5, torch.float32), make_params(shapes, 5, torch.float32)
    ref_s = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref_p]
    got_s = [(torch.zeros_like(p), torch.zeros_like(p)) for p in got_p]
    state, g = TopkState(), torch.Generator().manual_seed(6)
    for step in range(1, 4):
        grads = [torch.randn(p.shape, generator=g).to(DEV) for p in ref_p]
        sparse_adamw_step_(items_for(ref_p, ref_s, grads, step, specs, 1e-2), backend="torch")
        sparse_adamw_step_(items_for(got_p, got_s, [x.clone() for x in grads], step, specs, 1e-2),
                           backend=backend, state=state)
        assert_same_step(ref_p, got_p, torch.float32)
    assert int((got_p[0] != 0).sum()) == 150 and int((got_p[1] != 0).sum()) == 40


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_nan_in_update_raises_with_name(backend):
    skip_unless_available(backend)
    p = make_params([(8, 8)], 0, torch.float32)[0]
    grad = torch.zeros_like(p)
    grad[0, 0] = float("nan")
    it = AdamWTensor(param=p, grad=grad, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p), step=1,
                     lr=0.01, beta1=0.9, beta2=0.95, eps=0.1, weight_decay=0.0, k=10, name="mlp.c_fc")
    with pytest.raises(ValueError, match="mlp.c_fc"):
        sparse_adamw_step_([it], backend=backend)
