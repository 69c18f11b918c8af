"""emit_formats: the formats of many projected weights in one batched call equal compact()'s, on the torch
backend and the Triton kernels (interpreted on the CPU)."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparseformer.kernels import compact, emit_formats, project_topk_, protect_view

BACKENDS = ["torch", "triton"]
DEV = "cuda" if torch.cuda.is_available() else "cpu"      # Triton runs CPU tensors only under the interpreter
INDEX_FIELDS = ("row_ptr", "row", "col", "row32", "col32", "t_ptr", "t_row32", "t_col32", "t_perm")


def assert_same(sw, ref, ell=()):
    """Every field of the emitted format equals compact()'s, padded rows included where they were asked for."""
    assert (sw.shape, sw.nnz, sw.max_row_nnz, sw.max_col_nnz) == (ref.shape, ref.nnz, ref.max_row_nnz, ref.max_col_nnz)
    for f in INDEX_FIELDS:
        a, b = getattr(sw, f), getattr(ref, f)
        assert a.dtype == b.dtype and torch.equal(a, b), f
    for o in ell:
        if not ref.ell_fits(o):
            assert o not in sw._ell                 # refused, as the planner would
            continue
        assert o in sw._ell                         # built by the emit call, not on demand
        e, r = sw._ell[o], ref.ell(o)
        assert e.slots == r.slots
        for f in ("col", "src", "row_len"):
            assert getattr(e, f).dtype == getattr(r, f).dtype and torch.equal(getattr(e, f), getattr(r, f)), (o, f)


def _weight(n, k, content, layout, dtype, seed):
    """A weight [n, k] with the given content pattern, stored contiguous, as a transposed view or as a
    strided slice (which the device kernels read through a copy)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = (k, n) if layout == "transposed" else (n, 2 * k if layout == "strided" else k)
    if content == "ties":                        # few distinct magnitudes: the top-k cuts through tie groups
        w = torch.randint(-2, 3, (rows, cols), generator=g).float()
    else:
        w = torch.randn(rows, cols, generator=g)
    w = w.to(DEV, dtype)                         # before the view, so every dtype keeps the layout
    w = w.t() if layout == "transposed" else (w[:, ::2] if layout == "strided" else w)
    if content == "empty_lines" and n > 1 and k > 1:
        w[::2] = 0
        w[:, 1::3] = 0
    elif content == "skewed":                   # one full row among near-empty ones
        w.mul_((torch.rand(n, k, generator=g) < 0.05).to(DEV))
        w[n // 2] = 1.0
    return w


@given(specs=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24),
                                st.sampled_from(["random", "ties", "empty_lines", "skewed"]),
                                st.sampled_from(["contiguous", "transposed", "strided"]),
                                st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
                                st.floats(0.0, 1.0), st.sampled_from([None, 1, 2]),
                                st.sampled_from([(), (False,), (True,), (False, True)])),
                      min_size=1, max_size=4),
       slack=st.integers(0, 3), seed=st.integers(0, 2**16))
@example(specs=[(7, 5, "random", "contiguous", torch.float32, 0.0, None, (False, True)),      # k = 0
                (6, 9, "ties", "transposed", torch.bfloat16, 1.0, None, (False, True))],     # k = all
         slack=0, seed=0)
@example(specs=[(9, 8, "skewed", "strided", torch.float16, 0.3, 2, (False, True))], slack=2, seed=3)
@pytest.mark.parametrize("backend", BACKENDS)
def test_emit_equals_compact_after_a_projection(backend, specs, slack, seed):
    ws, caps, ells = [], [], []
    for i, (n, k, content, layout, dtype, frac, protect, ell) in enumerate(specs):
        w = _weight(n, k, content, layout, dtype, seed + i)
        kk = round(frac * n * k)
        view, j = protect_view(w, (protect, "rows") if protect else None)
        project_topk_([view], [kk], protect_per_row=[j])
        ws.append(w), caps.append(kk + slack), ells.append(ell)
    for w, sw, ell in zip(ws, emit_formats(ws, caps, ell=ells, backend=backend), ells):
        assert_same(sw, compact(w), ell)


@pytest.mark.parametrize("backend", BACKENDS)
def test_emit_counts_only_nonzero_survivors_and_checks_caps(backend):
    # k = all keeps zeros and -0.0 among the survivors: the format holds the non-zeros only
    w = torch.tensor([[0.0, -0.0, 3.0], [1.0, 0.0, -2.0]], device=DEV)
    sw = emit_formats([w], [6], ell=[(False, True)], backend=backend)[0]
    assert_same(sw, compact(w), (False, True))
    assert sw.nnz == 3
    with pytest.raises(ValueError, match="more than its cap"):
        emit_formats([w, w], [6, 2], backend=backend)


def test_emit_api_edges():
    assert emit_formats([], []) == []
    with pytest.raises(ValueError, match="2-D"):
        emit_formats([torch.ones(3)], [3])
    with pytest.raises(ValueError, match="caps"):
        emit_formats([torch.ones(2, 2)], [1, 2])
    w = torch.ones(3, 4)
    assert_same(emit_formats([w], [100])[0], compact(w))      # a cap above numel is numel


def test_emit_float64_and_a_mixed_dtype_call_on_triton():
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(13, 21, generator=g, dtype=torch.float64), torch.randn(30, 7, generator=g).bfloat16(),
          torch.randn(4, 33, generator=g)]
    ws = [w.to(DEV) for w in ws]
    ws[0][ws[0].abs() < 1.0] = 0
    ws[0][0, 0] = 1e-300                  # below float32's range: still a non-zero
    ws[1][ws[1].abs() < 0.5] = 0
    caps, ells = [int((w != 0).sum()) for w in ws], [(True,), (False,), (False, True)]
    for w, sw, ell in zip(ws, emit_formats(ws, caps, ell=ells, backend="triton"), ells):
        assert_same(sw, compact(w), ell)
