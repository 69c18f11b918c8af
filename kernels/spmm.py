"""Sparse matmuls for a linear layer whose weight W [N, K] is dense-shaped with zeros off its support.

The three products of a linear layer y = x W^T + b, with x [..., K] (any batch dims, flattened to M rows):
- forward  Y  = X W^T   (`dds(x, w, sw, "fwd")`: dense output, dense input, sparse weight)
- input    dX = dY W    (`dds(dy, w, sw, "dx")`)
- weight   dW = dY^T X  under a dW policy (`DwPolicy`):
  "dense" (default): the full dense product, the paper's semantics: every weight gets a gradient, so a
      pruned weight can re-enter the top-k;
  "support" (opt-in, CHANGES THE ALGORITHM): dW only on the current support plus a candidate set (`sdd`,
      an SDDMM), zero elsewhere; optionally a dense dW every `dense_every` backward passes, whose largest
      off-support entries become the candidates until the next dense one (RigL / Top-KAST style).
The reference for all of them is the masked dense product (`linear_ref`): since W holds exact zeros off the
support, F.linear on W is the ground truth and the torch "dense" method. Results match it up to float
rounding (fp32 accumulation everywhere); "dense" matches it bit for bit.

`sparse_linear(x, w, b, ...)` is the autograd functional; `plan_linear` picks the methods for a weight from
its measured density and tile occupancy (spmm_rules.py) and builds the SparseWeight they need
(sparse_format.py; for "ell" also its padded rows, or masked dense for a product whose rows are too skewed
to pad: sparse_format.ell_fits; a forced "ell" is kept); a caller may reuse a plan while the weight's
support is unchanged. dtypes: float32, float16, bfloat16 (float64 on the torch backend). Under autocast
the product runs in the autocast dtype and reads the fp32 weight directly; dW and db come back in the
parameters' dtypes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from . import spmm_rules
from .dispatch import resolve
from .sparse_format import SparseWeight, compact

__all__ = ["DwPolicy", "LinearPlan", "dds", "dds_ref", "linear_ref", "plan_linear", "sdd", "sdd_ref",
           "sparse_linear"]

log = logging.getLogger(__name__)

DW_MODES = ("dense", "support")
_COO_CHUNK = 1 << 24          # max gathered elements per chunk of the torch "coo" method


def linear_ref(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """The masked dense reference: F.linear on the dense-with-zeros weight."""
    return F.linear(x, w, b)


def dds_ref(a: Tensor, w: Tensor, op: str, bias: Tensor | None = None) -> Tensor:
    """'fwd': a @ w^T (+ bias); 'dx': a @ w (dense matmuls on the masked weight)."""
    w = w.to(a.dtype)
    if op == "fwd":
        return F.linear(a, w, None if bias is None else bias.to(a.dtype))
    return a @ w


def sdd_ref(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[z] = sum_m dy[m, rows[z]] * x[m, cols[z]] in fp32: (dy^T x) at the listed entries."""
    return (dy[:, rows].float() * x[:, cols].float()).sum(0)


@dataclass
class DwPolicy:
    """How dW is computed; see the module docstring. One per layer: it counts that layer's backward passes."""
    mode: str = "dense"                 # "dense" | "support"
    dense_every: int = 0                # support mode: dense dW every N backward passes (0 = never)
    candidates: float = 0.0             # support mode: extra entries, as a multiple of nnz, from the last dense dW
    calls: int = 0
    cand_flat: Tensor | None = field(default=None, repr=False)   # flat indices of the candidates

    def __post_init__(self):
        if self.mode not in DW_MODES:
            raise ValueError(f"dw_mode={self.mode!r} is unknown; choose one of {DW_MODES}")
        if self.dense_every < 0 or self.candidates < 0:
            raise ValueError(f"dense_every={self.dense_every} and candidates={self.candidates} must be >= 0")

    def grad(self, dy: Tensor, x: Tensor, w: Tensor, sw: SparseWeight, backend: str) -> Tensor:
        """dW for one backward pass (dy [M, N], x [M, K]), in w's dtype."""
        dense_now = self.mode == "dense" or (self.dense_every > 0 and self.calls % self.dense_every == 0)
        self.calls += 1
        if dense_now:
            g = (dy.t() @ x.to(dy.dtype)).to(w.dtype)
            if self.mode == "support" and self.candidates > 0:
                self._pick_candidates(g, sw)
            return g
        flat = sw.flat_index()
        if self.cand_flat is not None and self.cand_flat.device == flat.device:
            flat = torch.unique(torch.cat([flat, self.cand_flat]))
        n, k = sw.shape
        rows, cols = flat // k, flat % k
        g = torch.zeros(n * k, dtype=w.dtype, device=w.device)
        g[flat] = sdd(dy, x, rows, cols, backend=backend).to(w.dtype)
        return g.view(n, k)

    @torch.no_grad()
    def _pick_candidates(self, g: Tensor, sw: SparseWeight) -> None:
        score = g.abs().float().reshape(-1)
        score[sw.flat_index()] = -1.0
        c = min(int(self.candidates * max(sw.nnz, 1)), score.numel() - sw.nnz)
        self.cand_flat = score.topk(c, sorted=False).indices if c > 0 else None


@dataclass
class LinearPlan:
    """Resolved backend, the methods of the forward and dX products, and the format they read."""
    backend: str
    fwd: str
    dx: str
    sw: SparseWeight | None
    density: float | None         # None: not measured (the backend's rule is dense at every density)
    forced: bool = False          # methods named by the caller: never replaced by the fallback


def plan_linear(w: Tensor, *, dtype: torch.dtype | None = None, backend: str | None = None,
                method: str | None = None, dw_mode: str = "dense", sw: SparseWeight | None = None) -> LinearPlan:
    """Pick the methods for a weight (density measured now, tile occupancy if the rule asks) and build its
    SparseWeight when a method or the dW policy needs one. `method` (or SPARSEFORMER_SPMM_METHOD) forces both
    products' method. `dtype` is the compute dtype (default: w's)."""
    requested = backend or os.environ.get("SPARSEFORMER_BACKEND") or None
    if requested == "cuda":             # no CUDA-extension spmm: the Triton kernels serve a forced "cuda"
        requested = "triton"
    kind = resolve("spmm", w.device, requested, has_cuda_op=False)
    dtype = dtype or w.dtype
    forced = method or spmm_rules.forced_method()
    if sw is None and (forced not in (None, "dense") or dw_mode == "support"):
        sw = compact(w)
    if forced is None and sw is None and spmm_rules.sparsest_dense_density(kind) < 0:
        # the backend's rule is dense at every density: measuring it would cost a host sync per product
        return LinearPlan(backend=kind, fwd="dense", dx="dense", sw=None, density=None)
    density = sw.density if sw is not None else _density(w)
    if forced is not None:
        fwd = dx = spmm_rules.check_method(forced, kind)
    else:
        occ = None
        if kind == "triton" and density <= spmm_rules.sparsest_dense_density(kind):
            sw = sw if sw is not None else compact(w)
            occ = lambda t: sw.tile_map(t).occupancy   # noqa: E731
        fwd = dx = spmm_rules.choose(kind, density, dtype, occ)
    if sw is None and spmm_rules.needs_format(fwd):
        sw = compact(w)
    if forced is None and fwd == "ell":     # padded rows only where they fit (sparse_format.ell_fits)
        fwd = "ell" if sw.ell_fits(transposed=False) else spmm_rules.ELL_FALLBACK
        dx = "ell" if sw.ell_fits(transposed=True) else spmm_rules.ELL_FALLBACK
    for method, transposed in ((fwd, False), (dx, True)):
        if method == "ell":
            sw.ell(transposed)              # build now, not inside the first product
    return LinearPlan(backend=kind, fwd=fwd, dx=dx, sw=sw, density=density, forced=forced is not None)


def _density(w: Tensor) -> float:
    return int(torch.count_nonzero(w)) / w.numel() if w.numel() else 1.0


def dds(a: Tensor, w: Tensor, sw: SparseWeight | None, op: str, method: str = "dense",
        bias: Tensor | None = None) -> Tensor:
    """'fwd': Y = a W^T (+ bias, fused) [M, N]; 'dx': dX = a W [M, K]; a [M, K or N] in its own dtype."""
    if op not in ("fwd", "dx"):
        raise ValueError(f"dds: op must be 'fwd' or 'dx', got {op!r}")
    bias = bias if op == "fwd" else None
    if method == "dense":
        return dds_ref(a, w, op, bias)
    if sw is None:
        raise ValueError(f"dds: method {method!r} needs a SparseWeight")
    n, k = sw.shape
    vals = sw.values(w)
    if method in ("csr", "coo"):
        return _dds_torch(a, sw, vals, op, method, bias)
    from . import spmm_triton as st
    if method in ("gather", "gather_t"):
        a_in = _tokens_major(a) if method == "gather_t" else a
        if op == "fwd":
            return st.spmm_gather_triton(a_in, sw.row_ptr, sw.row32, sw.col32, vals, n, bias=bias)
        return st.spmm_gather_triton(a_in, sw.t_ptr, sw.t_col32, sw.t_row32, vals[sw.t_perm], k)
    if method == "ell":
        e = sw.ell(transposed=op == "dx")
        return st.spmm_ell_triton(_tokens_major(a), e.col, e.values(vals), e.row_len, bias=bias)
    if method == "tiles":
        tm = sw.tile_map(spmm_rules.GPU_RULE.tile)
        if op == "fwd":
            return st.spmm_tiles_triton(a, w.t(), tm.ptr, tm.idx, tm.tile, bias=bias)
        return st.spmm_tiles_triton(a, w, tm.t_ptr, tm.t_idx, tm.tile)
    raise ValueError(f"dds: unknown method {method!r}")


def _tokens_major(a: Tensor) -> Tensor:
    """`a` [M, Q] with tokens contiguous (stride(0) == 1): the layout in which the gather kernels read each
    column of A with one coalesced load. One copy unless it is already so (or has one row)."""
    return a if a.stride(0) == 1 or a.shape[0] <= 1 else a.t().contiguous().t()


def _dds_torch(a: Tensor, sw: SparseWeight, vals: Tensor, op: str, method: str, bias: Tensor | None) -> Tensor:
    n, k = sw.shape
    vals = vals.to(a.dtype)
    bias = None if bias is None else bias.to(a.dtype)
    if method == "csr":     # dense @ CSR: Y = X (W^T)_csr, dX = dY W_csr; contiguous row-major outputs
        if op == "fwd":
            s = torch.sparse_csr_tensor(sw.t_ptr.long(), sw.t_row32.long(), vals[sw.t_perm], (k, n),
                                        check_invariants=False)
        else:
            s = torch.sparse_csr_tensor(sw.row_ptr.long(), sw.col, vals, (n, k), check_invariants=False)
        return a @ s if bias is None else torch.addmm(bias, a, s)
    # "coo": out[:, dst] += a[:, src] * vals, chunked over rows to bound the gathered temporary
    src, dst, width = (sw.col, sw.row, n) if op == "fwd" else (sw.row, sw.col, k)
    if bias is None:
        out = torch.zeros(a.shape[0], width, dtype=a.dtype, device=a.device)
    else:
        out = bias.expand(a.shape[0], width).clone(memory_format=torch.contiguous_format)   # never a view
    step = max(1, _COO_CHUNK // max(sw.nnz, 1))
    for m0 in range(0, a.shape[0], step):
        out[m0:m0 + step].index_add_(1, dst, a[m0:m0 + step, src] * vals)
    return out


def _sdd_torch(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """sdd on the torch backend: one dense GEMM and a gather when the entries are many (the BLAS wins
    there), else gathered products summed in row chunks (bounded temporaries)."""
    n, k = dy.shape[1], x.shape[1]
    z = rows.numel()
    if z * 64 >= n * k:
        return (dy.t() @ x.to(dy.dtype))[rows, cols].float()
    out = torch.zeros(z, dtype=torch.float32, device=dy.device)
    step = max(1, _COO_CHUNK // max(z, 1))
    for m0 in range(0, dy.shape[0], step):
        out += sdd_ref(dy[m0:m0 + step], x[m0:m0 + step], rows, cols)
    return out


_BROKEN: dict[str, str] = {}     # auto-chosen Triton methods that raised here, with the reason
# methods that read tokens-contiguous activations -> the kernel method run on that copy; the autograd
# Function makes the copy itself so that dW reuses it
_ON_TOKENS_MAJOR = {"gather_t": "gather", "ell": "ell"}


def _dds_planned(a: Tensor, w: Tensor, plan: LinearPlan, op: str, method: str, bias: Tensor | None = None) -> Tensor:
    """dds by the planned method. A method the dispatcher chose (not one the caller forced) that raises is
    replaced by masked dense for the rest of the process, with one warning: training must not die on a
    kernel that fails to compile on some Triton version. Forced methods raise as usual (tests force them)."""
    if plan.forced or method in ("dense", "csr", "coo"):
        return dds(a, w, plan.sw, op, method, bias)
    if method in _BROKEN:
        return dds_ref(a, w, op, bias)
    try:
        return dds(a, w, plan.sw, op, method, bias)
    except Exception as e:   # compile/launch failure of a Triton kernel
        _BROKEN[method] = f"{type(e).__name__}: {e}"
        log.warning("sparse matmul: method %r failed (%s); using masked dense instead from now on",
                    method, _BROKEN[method].splitlines()[0][:200])
        return dds_ref(a, w, op, bias)


def sdd(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor, backend: str = "torch") -> Tensor:
    """(dy^T x) at the entries (rows[z], cols[z]), fp32 [Z]; the dW of a support."""
    if backend == "torch" or x.dtype == torch.float64:
        return _sdd_torch(dy, x, rows, cols)
    from .spmm_triton import sddmm_triton
    dy, x = _tokens_major(dy), _tokens_major(x)    # every gathered column one coalesced load
    return sddmm_triton(dy, x.to(dy.dtype), rows, cols)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: LinearPlan, policy: DwPolicy | None):   # x [..., K], weight [N, K]
        K = x.shape[-1]
        x2 = x.reshape(-1, K)                                   # flatten once, restore on exit
        with torch.autocast(device_type=x.device.type, enabled=False):
            kernel = _ON_TOKENS_MAJOR.get(plan.fwd)
            if kernel is not None and x2.shape[0] > 1 and kernel not in _BROKEN:
                x2 = _tokens_major(x2)                          # reused by dW below
                y2 = _dds_planned(x2, weight, plan, "fwd", kernel, bias)
            else:
                y2 = _dds_planned(x2, weight, plan, "fwd", plan.fwd, bias)
        ctx.save_for_backward(x2, weight)
        ctx.plan, ctx.policy, ctx.x_shape = plan, policy, x.shape
        ctx.has_bias, ctx.bias_dtype = bias is not None, (bias.dtype if bias is not None else None)
        return y2.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        plan = ctx.plan
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx = dw = db = None
        kernel = _ON_TOKENS_MAJOR.get(plan.dx)
        if kernel is not None and dy2.shape[0] > 1 and kernel not in _BROKEN:
            dy2 = _tokens_major(dy2)                # once, for dX and a support dW
            dx_method = kernel
        else:
            dx_method = plan.dx
        if need_dx:
            dx = _dds_planned(dy2, weight, plan, "dx", dx_method).reshape(ctx.x_shape)
        if need_dw:
            policy = ctx.policy
            if policy is None or policy.mode == "dense":
                dw = (dy2.t() @ x2).to(weight.dtype)
            else:
                sw = plan.sw if plan.sw is not None else compact(weight)
                dw = policy.grad(dy2, x2, weight, sw, plan.backend)
        if need_db and ctx.has_bias:
            db = dy2.float().sum(0).to(ctx.bias_dtype)
        return dx, dw, db, None, None


def sparse_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, plan: LinearPlan | None = None,
                  dw: DwPolicy | None = None, backend: str | None = None, method: str | None = None) -> Tensor:
    """y = x W^T + b with W dense-shaped and zero off its support; autograd for x, W and b.

    `plan` (from `plan_linear`) can be cached by the caller while W's support is unchanged; without one it is
    made here. `dw` sets the dW policy (default: dense). Matches F.linear(x, W, b) up to float rounding."""
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"sparse_linear: x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        x = x.to(torch.get_autocast_dtype(dev))
    elif x.dtype != weight.dtype:
        raise RuntimeError(f"sparse_linear: x is {x.dtype} but the weight is {weight.dtype}; cast one of them "
                           f"or run under torch.autocast")
    if plan is None:
        plan = plan_linear(weight, dtype=x.dtype, backend=backend, method=method,
                           dw_mode=dw.mode if dw is not None else "dense")
    return _SparseLinearFn.apply(x, weight, bias, plan, dw)
