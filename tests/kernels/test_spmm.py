"""Sparse matmuls: every backend/method against the masked dense reference (values and all three gradients).

Triton methods run through the interpreter on CPU (fp32/fp16, small shapes) and natively on a GPU; bf16
only on a GPU (bf16 dots are wrong under the Triton interpreter). The "ell" method also gets its own
tests at the end: skewed / empty rows and any input layout, the ELL builder, the planner's fit guard.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import dataclasses

from sparseformer.kernels import available
from sparseformer.kernels.sparse_format import compact
from sparseformer.kernels.spmm import launch, methods, rules
from sparseformer.kernels.spmm import triton_kernels as spmm_triton
from sparseformer.kernels.spmm import (DwPolicy, LinearPlan, dds, dds_ref, plan_linear, sdd, sdd_ref,
                                       sparse_linear)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# one row per method of the registry (kernels/spmm/methods.py); test_every_method_has_a_test_row checks it
TORCH_METHODS = [("torch", "dense"), ("torch", "csr"), ("torch", "coo")]
TRITON_METHODS = [("triton", "gather"), ("triton", "gather_t"), ("triton", "ell"), ("triton", "tiles")]
ALL_METHODS = TORCH_METHODS + TRITON_METHODS
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.float16: (1e-2, 1e-2),
       torch.bfloat16: (4e-2, 4e-2)}
# interpreted Triton is slow: fewer, smaller examples
FEW = settings(max_examples=8)


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    """Each drawn shape would be autotuned anew on a GPU; one config is enough to test correctness."""
    monkeypatch.setenv("SPARSEFORMER_AUTOTUNE", "0")


def skip_unless_available(backend):
    reason = available(DEV)[backend]
    if reason is not None:
        pytest.skip(reason)


def sparse_weight(n, k, density, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) < density)
    return w.to(DEV, dtype)


def assert_close(got, want, dtype, what):
    rtol, atol = TOL[dtype]
    scale = want.abs().max().item() if want.numel() else 0.0
    diff = (got.double() - want.double()).abs()
    ok = bool((diff <= atol * max(1.0, scale) + rtol * want.double().abs()).all()) if want.numel() else True
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert ok, f"{what}: max abs diff {diff.max().item():.3g}, mean {diff.mean().item():.3g} ({dtype})"


def _product_case(backend, method, m, n, k, density, seed, dtype):
    skip_unless_available(backend)
    w = sparse_weight(n, k, density, seed)
    sw = compact(w)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(m, k, generator=g).to(DEV, dtype)
    dy = torch.randn(m, n, generator=g).to(DEV, dtype)
    wd = w.double()
    assert_close(dds(x, w, sw, "fwd", method), x.double() @ wd.t(), dtype, f"{method} fwd")
    assert_close(dds(dy, w, sw, "dx", method), dy.double() @ wd, dtype, f"{method} dx")


@pytest.mark.parametrize("backend,method", TORCH_METHODS)
@given(m=st.integers(1, 40), n=st.integers(1, 48), k=st.integers(1, 48),
       density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**16))
@example(m=1, n=1, k=1, density=1.0, seed=0)
def test_torch_products_match_reference(backend, method, m, n, k, density, seed):
    _product_case(backend, method, m, n, k, density, seed, torch.float32)


@pytest.mark.parametrize("backend,method", TRITON_METHODS)
@FEW
@given(m=st.integers(1, 24), n=st.integers(1, 40), k=st.integers(1, 40),
       density=st.sampled_from([0.0, 0.03, 0.2]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float16]))
@example(m=1, n=17, k=33, density=0.2, seed=3, dtype=torch.float32)
@example(m=5, n=9, k=7, density=1.0, seed=4, dtype=torch.float32)
def test_triton_products_match_reference(backend, method, m, n, k, density, seed, dtype):
    _product_case(backend, method, m, n, k, density, seed, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,method", TRITON_METHODS)
@given(m=st.integers(1, 300), n=st.integers(1, 200), k=st.integers(1, 200),
       density=st.sampled_from([0.0, 0.002, 0.05, 1.0]), seed=st.integers(0, 2**16))
def test_triton_products_bf16_gpu(backend, method, m, n, k, density, seed):
    _product_case(backend, method, m, n, k, density, seed, torch.bfloat16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@FEW
@given(m=st.integers(1, 40), n=st.integers(1, 24), k=st.integers(1, 24),
       density=st.sampled_from([0.0, 0.1, 1.0]), seed=st.integers(0, 2**16))
def test_sdd_matches_dense_dw_on_the_support(backend, m, n, k, density, seed):
    skip_unless_available(backend)
    w = sparse_weight(n, k, density, seed)
    sw = compact(w)
    g = torch.Generator().manual_seed(seed)
    x, dy = torch.randn(m, k, generator=g).to(DEV), torch.randn(m, n, generator=g).to(DEV)
    want = (dy.double().t() @ x.double())[sw.row, sw.col]
    for method in ("gemm", "gather") + (("sddmm",) if backend == "triton" else ()):
        assert_close(sdd(dy, x, sw.row, sw.col, backend=backend, method=method), want, torch.float32, method)
    assert_close(sdd(dy, x, sw.row, sw.col, backend=backend), want, torch.float32, "sdd (chosen)")
    assert_close(sdd_ref(dy, x, sw.row, sw.col), want, torch.float32, "sdd_ref")


def _linear_case(backend, method, shape, n, density, seed, dtype, transpose_x=False, bias=True, weight=None):
    """y, dx, dW, db of sparse_linear against F.linear in float64 on the same masked weight (`weight`, or a
    random one of this density)."""
    skip_unless_available(backend)
    k = shape[-1]
    g = torch.Generator().manual_seed(seed)
    w0 = sparse_weight(n, k, density, seed, dtype) if weight is None else weight.to(DEV, dtype)
    b0 = torch.randn(n, generator=g).to(DEV, dtype) if bias else None
    if transpose_x:                                         # a non-contiguous input view
        x0 = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g).to(DEV, dtype).transpose(-1, -2)
    else:
        x0 = torch.randn(*shape, generator=g).to(DEV, dtype)
    dy = torch.randn(*shape[:-1], n, generator=g).to(DEV, dtype)

    def leaves(dt):
        out = [x0.detach().to(dt).requires_grad_(), w0.detach().to(dt).requires_grad_()]
        return out + [b0.detach().to(dt).requires_grad_() if bias else None]

    x, w, b = leaves(dtype)
    before = [t.detach().clone() for t in (x, w, b) if t is not None]
    y = sparse_linear(x, w, b, backend=backend, method=method)
    y.backward(dy)
    assert all(torch.equal(t0, t.detach()) for t0, t in zip(before, (x, w, b))), "an input was modified"
    xr, wr, br = leaves(torch.float64)
    yr = F.linear(xr, wr, br)
    yr.backward(dy.double())
    assert y.dtype == dtype
    assert_close(y, yr, dtype, f"{method} y")
    assert_close(x.grad, xr.grad, dtype, f"{method} dx")
    assert_close(w.grad, wr.grad, dtype, f"{method} dW")
    if bias:
        assert_close(b.grad, br.grad, dtype, f"{method} db")


@pytest.mark.parametrize("backend,method", TORCH_METHODS)
@given(batch=st.lists(st.integers(1, 4), min_size=0, max_size=2), m=st.integers(1, 9), n=st.integers(1, 24),
       k=st.integers(1, 24), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 2**16),
       transpose_x=st.booleans(), bias=st.booleans())
@example(batch=[], m=1, n=3, k=4, density=1.0, seed=1, transpose_x=False, bias=True)   # 1 row: bias not aliased
def test_torch_linear_values_and_grads(backend, method, batch, m, n, k, density, seed, transpose_x, bias):
    _linear_case(backend, method, (*batch, m, k), n, density, seed, torch.float32, transpose_x, bias)


@pytest.mark.parametrize("backend,method", TRITON_METHODS)
@FEW
@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=1), m=st.integers(1, 8), n=st.integers(1, 24),
       k=st.integers(1, 24), density=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 2**16),
       transpose_x=st.booleans())
def test_triton_linear_values_and_grads(backend, method, batch, m, n, k, density, seed, transpose_x):
    _linear_case(backend, method, (*batch, m, k), n, density, seed, torch.float32, transpose_x)


@pytest.mark.gpu
@pytest.mark.parametrize("backend,method", TRITON_METHODS)
@given(m=st.integers(1, 300), n=st.integers(1, 160), k=st.integers(1, 160),
       density=st.sampled_from([0.001, 0.05, 1.0]), seed=st.integers(0, 2**16))
def test_triton_linear_bf16_gpu(backend, method, m, n, k, density, seed):
    _linear_case(backend, method, (2, m, k), n, density, seed, torch.bfloat16)


@pytest.mark.parametrize("method", ["dense", "csr", "coo"])
def test_gradcheck_float64(method):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(5, 7, generator=g) * (torch.rand(5, 7, generator=g) < 0.4)).double().requires_grad_()
    x = torch.randn(2, 3, 7, generator=g).double().requires_grad_()
    b = torch.randn(5, generator=g).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: sparse_linear(x, w, b, backend="torch", method=method),
                                    (x, w, b))


def _dw_setup(seed=0, n=12, k=10, m=20):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.2)).requires_grad_()
    x = torch.randn(m, k, generator=g)
    dy = torch.randn(m, n, generator=g)
    return w, x, dy, dy.t() @ x


@pytest.mark.parametrize("method", ["dense", "coo"])
def test_support_dw_is_the_dense_dw_masked_to_the_support(method):
    w, x, dy, dense = _dw_setup()
    pol = DwPolicy("support")                                # never refreshed: the support only
    sparse_linear(x, w, dw=pol, method=method).backward(dy)
    assert_close(w.grad, dense * (w != 0), torch.float32, "support dW")
    assert torch.equal(pol.computed, w.detach().reshape(-1).nonzero().view(-1))


def test_support_dw_refresh_steps_and_candidates():
    w, x, dy, dense = _dw_setup(1)
    pol = DwPolicy("support", dense_every=2, candidates=0.5)
    sparse_linear(x, w, dw=pol).backward(dy)                 # step 0: a refresh, dense
    assert_close(w.grad, dense, torch.float32, "dense step")
    assert pol.computed is None
    pol.end_step(w.grad, w)                                  # candidates from the step's whole gradient
    support = w.detach().reshape(-1).nonzero().view(-1)
    c = int(0.5 * support.numel())
    off = dense.abs().masked_fill(w != 0, -1).reshape(-1)
    want = set(support.tolist()) | set(off.topk(c).indices.tolist())
    assert set(pol.tracked.tolist()) == want and pol.step == 1
    w.grad = None
    sparse_linear(x, w, dw=pol).backward(dy)                 # step 1: support + candidates
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[pol.tracked] = True
    assert_close(w.grad, dense * keep.view_as(dense), torch.float32, "support + candidates")
    assert torch.equal(pol.computed, pol.tracked)
    pol.end_step(None, w)
    w.grad = None
    sparse_linear(x, w, dw=pol).backward(dy)                 # step 2: dense again
    assert_close(w.grad, dense, torch.float32, "dense again")


def test_dw_policy_rejects_bad_mode():
    with pytest.raises(ValueError, match="dw_mode"):
        DwPolicy("sparse")


def test_plan_picks_by_density_and_can_be_forced(monkeypatch):
    monkeypatch.delenv("SPARSEFORMER_SPMM_METHOD", raising=False)
    monkeypatch.delenv("SPARSEFORMER_BACKEND", raising=False)
    dense_w = torch.randn(64, 64)
    p = plan_linear(dense_w)
    assert (p.fwd, p.dx, p.sw, p.density) == ("dense", "dense", None, 1.0)
    sparse_w = sparse_weight(64, 256, 1 / 512, 0).cpu()
    p = plan_linear(sparse_w, backend="torch")
    assert p.fwd != "dense" and p.sw is not None and p.sw.nnz == int((sparse_w != 0).sum())
    assert plan_linear(sparse_w.bfloat16(), backend="torch").fwd == "dense"   # torch.sparse paths: fp32/fp64
    monkeypatch.setenv("SPARSEFORMER_SPMM_METHOD", "csr")
    p = plan_linear(dense_w, backend="torch")
    assert (p.fwd, p.dx) == ("csr", "csr") and p.sw is not None
    with pytest.raises(ValueError, match="not one of"):
        plan_linear(dense_w, backend="torch", method="tiles")


def test_dtype_mismatch_raises_and_cpu_autocast_runs_in_bf16():
    w = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="float64"):
        sparse_linear(x.double(), w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse_linear(x, w, b)
        yr = F.linear(x, w, b)
    assert y.dtype == yr.dtype == torch.bfloat16
    assert torch.allclose(y.float(), yr.float(), atol=1e-2, rtol=1e-2)
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32


def test_dds_rejects_unknown_op_and_missing_format():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="op"):
        dds(torch.randn(2, 4), w, None, "bwd")
    with pytest.raises(ValueError, match="SparseWeight"):
        dds(torch.randn(2, 4), w, None, "fwd", "coo")
    assert torch.equal(dds_ref(torch.ones(1, 4), w, "fwd"), torch.ones(1, 4) @ w.t())


@pytest.mark.parametrize("launcher, fwd, dx, kernel", [("spmm_gather_triton", "gather_t", "gather", "gather"),
                                                     ("spmm_ell_triton", "ell", "ell", "ell")])
def test_a_failing_auto_chosen_kernel_falls_back_to_masked_dense(monkeypatch, caplog, launcher, fwd, dx, kernel):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated compile failure")
    monkeypatch.setattr(spmm_triton, launcher, broken)
    monkeypatch.setattr(launch, "FAILED", launch.FailedKernels())
    w = sparse_weight(6, 5, 0.5, 0).cpu().requires_grad_()
    x = torch.randn(3, 5, requires_grad=True)
    plan = LinearPlan(backend="triton", fwd=fwd, dx=dx, sw=compact(w), density=0.5)
    y = sparse_linear(x, w, plan=plan)
    assert torch.allclose(y, F.linear(x, w), atol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.ones(3, 6) @ w, atol=1e-6)
    assert kernel in launch.FAILED and "simulated compile failure" in caplog.text
    forced = LinearPlan(backend="triton", fwd=kernel, dx=kernel, sw=plan.sw, density=0.5, forced=True)
    with pytest.raises(RuntimeError, match="simulated"):
        sparse_linear(x, w, plan=forced)


def test_sdd_torch_sparse_path_matches_dense_dw():
    w = sparse_weight(64, 80, 0.004, 7).cpu()          # few entries: the chunked gather path
    sw = compact(w)
    g = torch.Generator().manual_seed(7)
    x, dy = torch.randn(50, 80, generator=g), torch.randn(50, 64, generator=g)
    assert 0 < sw.nnz and sw.nnz * 64 < 64 * 80
    want = (dy.double().t() @ x.double())[sw.row, sw.col]
    assert_close(sdd(dy, x, sw.row, sw.col, backend="torch"), want, torch.float32, "sdd chunked")


def test_a_forced_cuda_backend_means_triton_for_spmm(monkeypatch):
    monkeypatch.setenv("SPARSEFORMER_BACKEND", "cuda")
    if available(DEV)["triton"] is not None:
        with pytest.raises(RuntimeError, match="unavailable"):
            plan_linear(torch.randn(4, 4, device=DEV))
    else:
        assert plan_linear(torch.randn(4, 4, device=DEV)).backend == "triton"


# ---------------------------------------------------------------- the ELL ("ell") method

def _uneven_weight(n, k, density, heavy, seed, dtype=torch.float32):
    """A sparse weight with empty rows, and optionally one full row ("row") or one full column ("col")."""
    w = sparse_weight(n, k, density, seed).cpu()
    w[n // 2] = 0.0                                   # at least one empty row (and W^T: fewer entries)
    g = torch.Generator().manual_seed(seed + 2)
    if heavy == "row":
        w[0] = torch.randn(k, generator=g)            # fwd: one row with all Q entries
    elif heavy == "col":
        w[:, -1] = torch.randn(n, generator=g)        # dx: one row of W^T with all Q entries
    return w.to(DEV, dtype)


def _a_layout(a, layout):
    """The same values as `a` [M, Q] in another memory layout."""
    if layout == "tokens":
        return a.t().contiguous().t()
    if layout == "strided":                           # neither stride is 1
        big = torch.zeros(a.shape[0], 2 * a.shape[1] + 1, dtype=a.dtype, device=a.device)
        big[:, 1::2] = a
        return big[:, 1::2]
    return a


@FEW
@given(m=st.integers(1, 24), n=st.integers(1, 48), k=st.integers(1, 48),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), heavy=st.sampled_from([None, "row", "col"]),
       layout=st.sampled_from(["rows", "tokens", "strided"]), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2**16))
@example(m=3, n=40, k=33, density=0.05, heavy="row", layout="tokens", bias=True, dtype=torch.float32, seed=1)
@example(m=17, n=1, k=48, density=0.0, heavy=None, layout="strided", bias=True, dtype=torch.float16, seed=2)
def test_ell_kernel_matches_reference_on_uneven_rows(m, n, k, density, heavy, layout, bias, dtype, seed):
    """spmm_ell_triton (through dds) on skewed rows, empty rows and any A layout, with and without bias."""
    skip_unless_available("triton")
    w = _uneven_weight(n, k, density, heavy, seed)
    sw = compact(w)
    g = torch.Generator().manual_seed(seed + 1)
    x = _a_layout(torch.randn(m, k, generator=g).to(DEV, dtype), layout)
    dy = _a_layout(torch.randn(m, n, generator=g).to(DEV, dtype), layout)
    b = torch.randn(n, generator=g).to(DEV, dtype) if bias else None
    wd = w.double()
    want = x.double() @ wd.t() + (b.double() if bias else 0.0)
    assert_close(dds(x, w, sw, "fwd", "ell", bias=b), want, dtype, f"ell fwd {layout}")
    assert_close(dds(dy, w, sw, "dx", "ell"), dy.double() @ wd, dtype, f"ell dx {layout}")
    # the kernel itself on the caller's strides (dds hands it a tokens-contiguous copy)
    e = sw.ell()
    got = spmm_triton.spmm_ell_triton(x, e.col, e.values(sw.values(w)), e.row_len, bias=b)
    assert_close(got, want, dtype, f"spmm_ell_triton {layout}")


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("n,k,density,heavy", [(7, 5, 0.4, None), (9, 11, 0.2, "row"), (6, 8, 0.3, "col"),
                                               (4, 3, 0.0, None), (5, 6, 1.0, None), (0, 3, 0.5, None)])
def test_ell_builder_reconstructs_the_weight(transposed, n, k, density, heavy):
    w = _uneven_weight(n, k, density, heavy, 3).cpu() if n else torch.zeros(0, k)
    sw = compact(w)
    assert sw._ell == {}                                     # lazy: compact builds no ELL
    e = sw.ell(transposed)
    assert sw.ell(transposed) is e                           # built once
    s = w.t() if transposed else w                           # S [P, Q]
    P, Q = s.shape
    counts = (s != 0).sum(1)
    assert e.slots == (int(counts.max()) if P else 0)
    assert e.col.shape == e.src.shape == (e.slots, P) and e.col.dtype == torch.int32
    assert torch.equal(e.row_len, counts.to(torch.int32))
    vals = e.values(sw.values(w))
    live = torch.arange(e.slots)[:, None] < e.row_len[None, :]
    assert bool((e.col[~live] == 0).all()) and bool((e.src[~live] == sw.nnz).all())
    assert bool((vals[~live] == 0).all())
    rebuilt = torch.zeros(P, Q)
    p_idx = torch.arange(P).expand(e.slots, P)
    rebuilt[p_idx[live], e.col[live].long()] = vals[live]
    assert torch.equal(rebuilt, s)
    for j in range(e.slots):                                 # columns ascend inside each row
        nxt = live[j + 1:j + 2] if j + 1 < e.slots else None
        if nxt is not None:
            assert bool((e.col[j + 1][nxt[0]] > e.col[j][nxt[0]]).all())


def test_ell_fits_guards_skewed_rows():
    w = torch.zeros(256, 64)
    w[0] = 1.0                                               # one full row: L*P = 64*256 > 4 * (64+255 + 256)
    w[torch.arange(1, 256), torch.arange(1, 256) % 64] = 2.0
    sw = compact(w)
    assert not sw.ell_fits(transposed=False)
    assert sw.ell_fits(transposed=True)                     # columns hold 4..5 entries each
    assert sw._ell == {}                                     # deciding needs no build
    w = torch.zeros(3072, 768)                               # far below one entry per row: fits
    w[torch.arange(0, 3072, 4), torch.arange(0, 3072, 4) % 768] = 1.0
    w[0, :3] = 1.0
    assert compact(w).ell_fits(transposed=False)


def _ell_tier(monkeypatch, max_density=1 / 256):
    """Give the ELL method the rule tier it would get once a GPU run shows it winning."""
    entry = dataclasses.replace(methods.METHODS["ell"], max_density=max_density)
    monkeypatch.setitem(methods.METHODS, "ell", entry)


def test_every_method_has_a_test_row():
    for backend in ("torch", "triton"):
        assert set(methods.names(backend)) == {m for b, m in ALL_METHODS if b == backend} | {"dense"}


def test_gpu_rule_is_masked_dense_until_measured(monkeypatch):
    monkeypatch.delenv("SPARSEFORMER_SPMM_METHOD", raising=False)
    for d in (1 / 4096, 1 / 1024, 1 / 256, 1 / 16, 1.0):
        assert rules.choose("triton", d, torch.bfloat16, occupancy=lambda t: 0.0) == "dense"
    assert rules.sparsest_dense_density("triton") < 0
    _ell_tier(monkeypatch)
    assert rules.choose("triton", 1 / 1024, torch.bfloat16) == "ell"
    assert rules.choose("triton", 1 / 16, torch.bfloat16) == "dense"
    assert rules.choose("triton", 1 / 1024, torch.float64) == "dense"     # not one of its dtypes
    assert rules.choose("torch", 1 / 1024, torch.float32) == "coo"        # the sparsest CPU tier wins
    assert rules.choose("torch", 1 / 256, torch.float32) == "coo"
    assert rules.choose("torch", 1 / 64, torch.float32) == "dense"        # csr: thread-dependent, never auto
    assert rules.choose("torch", 1 / 1024, torch.bfloat16) == "dense"


def test_plan_uses_ell_where_rows_fit_and_falls_back_elsewhere(monkeypatch):
    skip_unless_available("triton")
    monkeypatch.delenv("SPARSEFORMER_SPMM_METHOD", raising=False)
    monkeypatch.delenv("SPARSEFORMER_BACKEND", raising=False)
    w = sparse_weight(512, 128, 1 / 1024, 0)
    p = plan_linear(w, backend="triton")                    # the measured rule: dense, density not measured
    assert (p.fwd, p.dx, p.sw, p.density) == ("dense", "dense", None, None)
    with torch.no_grad():
        x = torch.ones(3, 128, device=w.device)
        assert torch.equal(sparse_linear(x, w, plan=p), x @ w.t())
    _ell_tier(monkeypatch)
    p = plan_linear(w, backend="triton")
    assert (p.fwd, p.dx) == ("ell", "ell") and set(p.sw._ell) == {False, True}   # built by the planner
    skewed = w.clone()
    skewed[0] = 1.0                                          # one full row: W's padded rows would not fit
    p = plan_linear(skewed, backend="triton")
    assert (p.fwd, p.dx) == (methods.METHODS["ell"].fallback, "ell") and set(p.sw._ell) == {True}
    p = plan_linear(skewed, backend="triton", method="ell")  # forced: kept
    assert (p.fwd, p.dx, p.forced) == ("ell", "ell", True)


@pytest.mark.parametrize("heavy", [None, "row", "col"])
def test_ell_linear_forced_by_env_values_and_grads(monkeypatch, heavy):
    """All three gradients through the autograd path with SPARSEFORMER_SPMM_METHOD=ell (batched, bias,
    a non-contiguous input), incl. a full row or column."""
    skip_unless_available("triton")
    monkeypatch.setenv("SPARSEFORMER_SPMM_METHOD", "ell")
    assert plan_linear(sparse_weight(6, 5, 0.5, 0), backend="triton").fwd == "ell"
    real = spmm_triton.spmm_ell_triton
    calls = []
    monkeypatch.setattr(spmm_triton, "spmm_ell_triton",
                        lambda *a, **kw: calls.append(a[0].stride()) or real(*a, **kw))
    w0 = _uneven_weight(20, 12, 0.2, heavy, 5)
    _linear_case("triton", None, (2, 3, 12), 20, 0.2, 5, torch.float32, transpose_x=True, bias=True,
                 weight=w0)
    assert len(calls) == 2 and all(s[0] == 1 for s in calls)   # fwd and dX, on tokens-contiguous activations
