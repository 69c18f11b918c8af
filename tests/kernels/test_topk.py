"""Every top-k backend against the reference (kernels/topk/reference.py): masks, batched in-place projection, ties,
k = 0 / numel, zeros and -0, empty rows and tensors, bf16/fp16, non-contiguous views, row protection, NaN/inf
errors, warm starts. "torch-phases" is the torch kernel set driven through the phases (kernels/topk/phases.py),
the path a run across ranks takes; "torch" is the single-process fast path.

On a machine without a GPU, "triton" runs through the interpreter with tiny shapes and "cuda" skips; under
`pytest -m gpu` (HYPOTHESIS_PROFILE=gpu) the same comparisons run on the GPU with larger shapes.
"""

import os
import shutil
import subprocess

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparseformer.kernels import TopkState, available, project_topk_, topk_mask
from sparseformer.kernels.topk import Target, phases, project_, search
from sparseformer.kernels.topk.reference import per_tensor, topk_mask_ref

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
BACKENDS = ["torch", "torch-phases", "triton", "cuda"]
MAX_R, MAX_C = (300, 700) if GPU else (20, 48)
EXAMPLES = 40 if GPU else 10          # the interpreter costs ~0.5 s per projection


def skip_unless_available(backend):
    reason = available(DEV)[backend.split("-")[0]]
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def mask_of(w, k, j, backend):
    if backend == "torch-phases":
        return project_([Target(w, k, j)], "torch", mask_mode=True)[0]
    return topk_mask(w, k, protect_per_row=j, backend=backend)


def project(ws, ks, backend, protect=None, names=None, state=None):
    if backend != "torch-phases":
        return project_topk_(ws, ks, protect_per_row=protect, names=names, backend=backend, state=state)
    names = names or [f"tensors[{i}]" for i in range(len(ws))]
    project_([Target(w, k, j, n) for w, k, j, n in zip(ws, ks, per_tensor(protect, len(ws)), names)], "torch",
             state=state)


@st.composite
def tensors(draw, max_r=MAX_R, max_c=MAX_C):
    """A 2-D tensor on DEV: random, few distinct magnitudes (ties), or mostly zeros; maybe a view."""
    rows = draw(st.one_of(st.integers(1, max_r), st.just(0)))
    cols = draw(st.integers(1, max_c))
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "signed_zeros", "empty_rows"]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        w = torch.randn(rows, cols, generator=g)
    elif kind == "ties":
        w = torch.randint(-3, 4, (rows, cols), generator=g).float() * 0.25
    elif kind == "zeros":
        w = torch.zeros(rows, cols)
    elif kind == "empty_rows":
        w = torch.randn(rows, cols, generator=g)
        w[torch.rand(rows, generator=g) < 0.5] = 0.0
    else:
        w = torch.randn(rows, cols, generator=g)
        w[torch.rand(rows, cols, generator=g) < 0.5] = 0.0
        w = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -w, w)  # -0.0 entries
    w = w.to(dtype).to(DEV)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        w = w.t()
    elif layout == "strided" and cols > 1:
        w = w[:, ::2]
    return w


def draw_k(data, w):
    n = w.numel()
    return data.draw(st.one_of(st.integers(0, n), st.sampled_from([0, n, n + 5, -1])), label="k")


def expect_projected(w, mask):
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_topk_mask_matches_ref(backend, data):
    skip_unless_available(backend)
    w = data.draw(tensors())
    k = draw_k(data, w)
    j = data.draw(st.sampled_from([None, None, 1, 4]), label="protect")
    got = mask_of(w, k, j, backend)
    ref = topk_mask_ref(w, k, j)
    assert got.shape == w.shape and got.dtype == torch.bool
    assert torch.equal(got.cpu(), ref.cpu())
    assert int(got.sum()) == max(0, min(k, w.numel()))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_project_batched_matches_ref(backend, data):
    skip_unless_available(backend)
    ws = data.draw(st.lists(tensors(), min_size=1, max_size=3), label="tensors")
    ks = [draw_k(data, w) for w in ws]
    prot = [data.draw(st.sampled_from([None, 2]), label="protect") for _ in ws]
    refs = [topk_mask_ref(w, k, j) for w, k, j in zip(ws, ks, prot)]
    expected = [expect_projected(w, r) for w, r in zip(ws, refs)]
    project(ws, ks, backend, prot)
    for w, e in zip(ws, expected):
        assert torch.equal(w.cpu(), e.cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["k0", "kn", "all_zero", "all_equal", "one_row", "one_elem", "many_blocks",
                                  "empty"])
def test_edge_cases(backend, case):
    skip_unless_available(backend)
    w = {"k0": torch.randn(5, 7), "kn": torch.randn(5, 7), "all_zero": torch.zeros(6, 5),
         "all_equal": torch.full((4, 9), -0.5), "one_row": torch.randn(1, 33), "one_elem": torch.randn(1),
         "many_blocks": torch.randn(40, 70), "empty": torch.zeros(0, 5)}[case]
    k = {"k0": 0, "kn": 35, "all_zero": 13, "all_equal": 17, "one_row": 5, "one_elem": 1, "many_blocks": 99,
         "empty": 3}[case]
    w = w.to(DEV)
    ref = topk_mask_ref(w, k)
    assert torch.equal(mask_of(w, k, None, backend).cpu(), ref.cpu())
    expected = expect_projected(w, ref)
    project([w], [k], backend)
    assert torch.equal(w.cpu(), expected.cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_raises_naming_the_tensor_and_changes_nothing(backend, bad):
    skip_unless_available(backend)
    a, b = torch.randn(4, 6, device=DEV), torch.randn(3, 5, device=DEV)
    b[1, 2] = bad
    a0, b0 = a.clone(), b.clone()
    with pytest.raises(ValueError, match="'mlp.c_fc'"):
        project([a, b], [5, 5], backend, names=["attn.c_attn", "mlp.c_fc"])
    assert torch.equal(a, a0) and torch.equal(b.nan_to_num(), b0.nan_to_num())


@pytest.mark.parametrize("backend", ["torch-phases", "triton", "cuda"])
def test_warm_start_follows_moving_weights(backend):
    """A TopkState carried across calls gives the reference result whether the guess hits or misses."""
    skip_unless_available(backend)
    g = torch.Generator().manual_seed(0)
    state = TopkState()
    w0 = [torch.randn(24, 40, generator=g), torch.randn(300, generator=g)]
    for step, factor in enumerate([1.0, 1.01, 1.0, 3.0, 0.2]):     # small drifts, then jumps (misses)
        ws = [(w * factor + 0.01 * torch.randn(w.shape, generator=g)).to(DEV) for w in w0]
        ks = [100 + step, 30]
        expected = [expect_projected(w, topk_mask_ref(w, k)) for w, k in zip(ws, ks)]
        project(ws, ks, backend, state=state)
        for w, e in zip(ws, expected):
            assert torch.equal(w.cpu(), e.cpu()), step
        assert state.center is not None and all(c >= 0 for c in state.center)


@pytest.mark.parametrize("backend", ["torch-phases", "triton", "cuda"])
def test_refinement_and_full_range_fallback(backend, monkeypatch):
    """Force the slow paths: candidates over the cap (window refinement) and a missed sample window."""
    skip_unless_available(backend)
    monkeypatch.setattr(search, "CAND_CAP", 3)

    def bogus(K, g, searches, sampled):
        return [(0, 0)] * len(sampled)                           # window [0, 2048) misses every real key

    monkeypatch.setattr(phases, "sample_windows", bogus)
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(30, 17, generator=g).to(DEV), (torch.randint(0, 3, (40,), generator=g) * 0.5).to(DEV)]
    ks = [77, 11]
    expected = [expect_projected(w, topk_mask_ref(w, k)) for w, k in zip(ws, ks)]
    project(ws, ks, backend)
    for w, e in zip(ws, expected):
        assert torch.equal(w.cpu(), e.cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensors_match_torch_backend(backend, dtype):
    skip_unless_available(backend)
    g = torch.Generator(device="cuda").manual_seed(0)
    ws = [torch.randn(s, device="cuda", generator=g).to(dtype) for s in [(2048, 1024), (4096,), (1024, 4096)]]
    ks = [2048 * 1024 // 64, 4096 // 4, 1024 * 4096 // 64]
    expected = [w.clone() for w in ws]
    project_topk_(expected, ks, backend="torch")
    project_topk_(ws, ks, backend=backend)
    for w, e in zip(ws, expected):
        assert torch.equal(w, e)


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
def test_csrc_kernels_compile_with_nvcc(tmp_path):
    """The .cu files use no torch headers, so nvcc builds them on any machine (bindings.cpp needs torch's)."""
    csrc = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
    for name in ["topk_kernels.cu", "adamw_kernels.cu"]:
        cmd = [_nvcc(), "-c", "-O1", "-std=c++17", "-arch=sm_90", os.path.join(csrc, name),
               "-o", str(tmp_path / (name + ".o"))]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
