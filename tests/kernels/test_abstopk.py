"""AbsTopK (kernels/abstopk) on every backend against the readable rule (abstopk_ref): values, the per-row
selection (thr, cut), ties to the lowest column, k = 0 / k >= width, empty and skewed rows, NaN/inf,
16-bit and float64 inputs, non-contiguous views, the chunked path for wide rows, and the masked backward
(gradcheck). Without a GPU the Triton kernels run under TRITON_INTERPRET=1 on small shapes (they only load,
bit-cast and compare, so bf16 is exact there); under `pytest -m gpu` the same checks run on CUDA."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseformer.kernels import available
from sparseformer.kernels.abstopk import abstopk, abstopk_ref, abstopk_rows, mask_from_output
from sparseformer.kernels.abstopk.triton_kernels import abstopk_fwd_triton

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
MAX_M, MAX_C = (300, 3000) if GPU else (24, 128)
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def needs(backend):
    reason = available(DEV)[backend]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def values(kind: str, m: int, c: int, g: torch.Generator) -> torch.Tensor:
    """[m, c] float64 values of one kind (all exactly representable in float16 where it matters)."""
    if kind == "normal":
        return torch.randn(m, c, generator=g, dtype=torch.float64)
    if kind == "ties":                      # few distinct magnitudes, both signs
        return torch.randint(-3, 4, (m, c), generator=g).double() * 0.5
    if kind == "zeros":                     # empty rows, and rows with fewer non-zeros than k
        x = torch.randn(m, c, generator=g, dtype=torch.float64)
        return x * (torch.rand(m, 1, generator=g) < 0.5) * (torch.rand(m, c, generator=g) < 0.3)
    if kind == "skewed":                    # rows of very different scales, one dominant entry per row
        x = torch.randn(m, c, generator=g, dtype=torch.float64)
        x *= 10.0 ** torch.randint(-4, 5, (m, 1), generator=g)
        if x.numel():
            x[torch.arange(m), torch.randint(0, c, (m,), generator=g)] *= 1e3
        return x
    if kind == "signed_zeros":
        x = torch.randn(m, c, generator=g, dtype=torch.float64)
        x[torch.rand(m, c, generator=g) < 0.6] = 0.0
        return torch.where(torch.rand(m, c, generator=g) < 0.5, -x, x)
    x = torch.randn(m, c, generator=g, dtype=torch.float64)      # "special": inf and NaN of both signs
    pick = torch.rand(m, c, generator=g)
    x[pick < 0.05] = float("inf")
    x[(pick >= 0.05) & (pick < 0.1)] = float("-inf")
    x[(pick >= 0.1) & (pick < 0.13)] = float("nan")
    return x


@st.composite
def inputs(draw, dtypes=DTYPES, max_m=MAX_M, max_c=MAX_C):
    """(x on DEV, k): x 2-D or 3-D, maybe a transposed or strided view; k anywhere in [-1, width + 3]."""
    m = draw(st.integers(0, max_m))
    c = draw(st.integers(1, max_c))
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "skewed", "signed_zeros", "special"]))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided", "3d"]))
    if layout == "transposed":
        x = values(kind, c, m, g).to(dtype).to(DEV).t()
    elif layout == "strided":
        x = values(kind, m, 2 * c, g).to(dtype).to(DEV)[:, 1::2]
    elif layout == "3d":
        x = values(kind, 2 * m, c, g).to(dtype).to(DEV).view(2, m, c)
    else:
        x = values(kind, m, c, g).to(dtype).to(DEV)
    k = draw(st.one_of(st.integers(0, c), st.sampled_from([0, 1, c, c + 3, -1])))
    return x, k


def ref_y(x, k):
    """The rule applied to any shape (k clipped to [0, width])."""
    c = x.shape[-1]
    y, _, _ = abstopk_ref(x.reshape(-1, c), min(max(k, 0), c))
    return y.view(x.shape)


def same(a, b):
    """Bitwise equality (NaN == NaN, -0 != +0)."""
    ity = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(ity),
                                                                     b.contiguous().view(ity))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@given(case=inputs())
def test_selection_matches_rule(backend, case):
    """(y, thr, cut) of each backend equal the rule's, bit for bit, on the launcher's default tiles."""
    needs(backend)
    x, k = case
    x2 = x.reshape(-1, x.shape[-1])
    k = min(max(k, 0), x2.shape[1])
    got = abstopk_rows(x2, k, backend)
    want = abstopk_ref(x2, k)
    assert same(got[0], want[0])
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@settings(max_examples=min(12, settings.default.max_examples))
@given(case=inputs(DTYPES[:3], *((MAX_M, MAX_C) if GPU else (8, 80))), block_c=st.sampled_from([16, 32]),
       block_r=st.sampled_from([2, 8]), early=st.booleans())
def test_triton_tilings(case, block_c, block_r, early):
    """The kernel's other paths: rows wider than a tile (chunked), several rows per program, the search with
    and without early exit."""
    needs("triton")
    x, k = case
    x2 = x.reshape(-1, x.shape[-1])
    k = min(max(k, 0), x2.shape[1])
    want = abstopk_ref(x2, k)
    for cfg in (dict(CHUNKED=True, BLOCK_C=block_c, BLOCK_R=block_r),
                dict(BLOCK_R=block_r, EARLY_EXIT=early)):
        got = abstopk_fwd_triton(x2, k, **cfg)
        assert same(got[0], want[0]), cfg
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]), cfg


@pytest.mark.parametrize("backend", ["torch", "triton"])
@given(case=inputs())
def test_op_and_masked_backward(backend, case):
    """abstopk(x, k): the rule's values (x itself for k >= width), and the gradient is the upstream gradient
    on the kept entries (also kept zeros) and 0 elsewhere; the upstream gradient may be non-contiguous."""
    needs(backend)
    x, k = case
    x = x.detach().clone().requires_grad_(True) if x.is_contiguous() else x.detach().requires_grad_(True)
    y = abstopk(x, k, backend=backend)
    assert same(y.detach(), ref_y(x.detach(), k))
    if k >= x.shape[-1]:
        assert y is x
        return
    up = torch.randn(x.shape[::-1], dtype=torch.float64).to(x.dtype).to(DEV)
    up = up.permute(*range(x.ndim - 1, -1, -1))                       # same shape, transposed strides
    (grad,) = torch.autograd.grad(y, x, up) if y.requires_grad else (torch.zeros_like(x),)
    c = x.shape[-1]
    _, thr, cut = abstopk_ref(x.detach().reshape(-1, c), max(k, 0))
    kept = mask_from_output(ref_y(x.detach(), k).reshape(-1, c), thr, cut).view(x.shape)
    assert same(grad, torch.where(kept, up, torch.zeros((), dtype=x.dtype, device=DEV)))


def test_ties_go_to_the_lowest_column():
    x = torch.tensor([[1.0, -2.0, 2.0, -1.0, 2.0, 0.5]], device=DEV)
    for backend in ("torch", "triton"):
        if available(DEV)[backend] is not None:
            continue
        y, thr, cut = abstopk_rows(x, 2, backend)
        assert y.tolist() == [[0.0, -2.0, 2.0, 0.0, 0.0, 0.0]]
        assert cut.tolist() == [2]
        y, _, cut = abstopk_rows(x, 4, backend)        # the kept tie of magnitude 1: the first of the two
        assert y.tolist() == [[1.0, -2.0, 2.0, 0.0, 2.0, 0.0]] and cut.tolist() == [0]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradcheck(backend):
    needs(backend)
    g = torch.Generator().manual_seed(0)
    # distinct magnitudes far apart compared with gradcheck's step, so the selection does not flip
    mags = torch.randperm(5 * 11, generator=g).double().view(5, 11) + 1.0
    signs = torch.where(torch.rand(5, 11, generator=g) < 0.5, -1.0, 1.0).double()
    x = (mags * signs).to(DEV).requires_grad_(True)
    for k in (0, 1, 4, 10):
        assert torch.autograd.gradcheck(lambda t: abstopk(t, k, backend=backend), (x,), eps=1e-3, atol=1e-7,
                                        fast_mode=backend == "triton")    # fewer interpreted calls


def test_cpu_default_is_torch_and_cuda_means_triton():
    from sparseformer.kernels.abstopk import _backend
    assert _backend(torch.device("cpu"), None) == "torch"
    if available(DEV)["triton"] is None:
        assert _backend(torch.device(DEV), "cuda") == "triton"
    with pytest.raises(ValueError):
        abstopk(torch.tensor(1.0), 0)


@pytest.mark.gpu
def test_triton_is_the_default_on_cuda():
    from sparseformer.kernels.abstopk import _backend
    assert _backend(torch.device("cuda"), None) == "triton"
    x = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    assert same(abstopk(x, 256), ref_y(x, 256))


def test_model_sites_match_topk_and_scatter(monkeypatch):
    """The GPT's AbsTopK sites (torch backend on the CPU) give the same logits and gradients, bit for bit, as
    the straightforward torch.topk + scatter (random floats: no ties at the threshold)."""
    import sparseformer.model as model_mod
    from sparseformer.config import get_preset

    def topk_scatter(x, k):
        if k >= x.shape[-1]:
            return x
        idx = x.abs().topk(k, dim=-1, sorted=False).indices
        return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))

    cfg = get_preset("tiny").model
    cfg.n_layer = 1
    idx = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    runs = []
    for fn in (None, topk_scatter):
        if fn is not None:
            monkeypatch.setattr(model_mod, "abstopk", fn)
        torch.manual_seed(0)
        m = model_mod.GPT(cfg)
        logits = m(idx)
        logits.square().mean().backward()
        runs.append([logits.detach()] + [p.grad for p in m.parameters() if p.grad is not None])
    assert len(runs[0]) == len(runs[1]) > 10
    assert all(torch.equal(a, b) for a, b in zip(*runs))


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sparseformer.kernels.abstopk import triton_kernels as K
ints = {n: "i32" for n in ("M", "C", "k", "stride_xm", "stride_xc", "stride_gm", "stride_gc")}
for ty, bits, early, chunked in (("bf16", 15, False, False), ("fp32", 31, True, False), ("fp32", 31, False, True)):
    sig = dict(x_ptr="*" + ty, y_ptr="*" + ty, thr_ptr="*i64", cut_ptr="*i64", M="i32", C="i32", k="i32",
               stride_xm="i32", stride_xc="i32")
    const = dict(KEY_BITS=bits, EARLY_EXIT=early, CHUNKED=chunked, BLOCK_R=2, BLOCK_C=1024)
    sig.update({c: "constexpr" for c in const})
    triton.compile(ASTSource(K._abstopk_fwd_kernel, sig, const), target=GPUTarget("cuda", 90, 32))
sig = dict(g_ptr="*bf16", y_ptr="*bf16", thr_ptr="*i64", cut_ptr="*i64", dx_ptr="*bf16", M="i32", C="i32",
           stride_gm="i32", stride_gc="i32", KEY_BITS="constexpr", BLOCK_R="constexpr", BLOCK_C="constexpr")
triton.compile(ASTSource(K._abstopk_bwd_kernel, sig, dict(KEY_BITS=15, BLOCK_R=4, BLOCK_C=1024)),
               target=GPUTarget("cuda", 90, 32))
print("compiled")
"""


@pytest.mark.skipif(GPU, reason="the GPU tests run the kernels themselves")
def test_triton_kernels_compile_for_hopper():
    """The interpreter does not type-check kernels as the compiler does: compile the main variants for sm_90
    (Triton ships its own ptxas; no GPU needed) in a process without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
