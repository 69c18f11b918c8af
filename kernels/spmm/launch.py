"""Run a product by method name (the registry in methods.py), and keep training alive when a kernel fails.

`dds(a, w, sw, op, method, bias)`: op "fwd": Y = a W^T (+ bias, fused) [M, N]; op "dx": dX = a W [M, K].
`sdd(dy, x, rows, cols, backend, method)`: (dy^T x) at the listed entries, fp32 [Z] (the dW of a support),
by one of SDD_METHODS: "gemm" (the dense product, then a gather), "gather" (gathered products in row
chunks, any device) or "sddmm" (the Triton kernel); `sdd_method` picks one from measurements.
`run_planned` runs the method a LinearPlan chose. A Triton method the dispatcher chose by itself (not one
the caller forced) that raises, typically a kernel that does not compile on some Triton version, is
recorded in FAILED and replaced by masked dense for the rest of the process, with one warning: a training
run must not die on it. Forced methods raise as usual (tests and benchmarks force them).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from . import methods
from .reference import OPS, dds_ref
from .torch_kernels import sdd_gather, sdd_gemm

__all__ = ["FAILED", "SDD_METHODS", "dds", "run_planned", "sdd", "sdd_method", "tokens_major"]

log = logging.getLogger(__name__)


def tokens_major(a: Tensor) -> Tensor:
    """`a` [M, Q] with tokens contiguous (stride(0) == 1): the layout in which the gather kernels read each
    column of A with one coalesced load. One copy unless it is already so (or has one row)."""
    return a if a.stride(0) == 1 or a.shape[0] <= 1 else a.t().contiguous().t()


def dds(a: Tensor, w: Tensor, sw: SparseWeight | None, op: str, method: str = "dense",
        bias: Tensor | None = None) -> Tensor:
    """'fwd': Y = a W^T (+ bias, fused) [M, N]; 'dx': dX = a W [M, K]; a [M, K or N] in its own dtype."""
    if op not in OPS:
        raise ValueError(f"dds: op must be one of {OPS}, got {op!r}")
    m = methods.get(method)
    if m.fmt is not None and sw is None:
        raise ValueError(f"dds: method {method!r} needs a SparseWeight (kernels.compact(w))")
    if m.tokens_major:
        a = tokens_major(a)
    return m.fwd(a, w, sw, bias) if op == "fwd" else m.dx(a, w, sw)


SDD_METHODS = ("gemm", "gather", "sddmm")


def sdd_method(backend: str, z: int, n: int, k: int) -> str:
    """The SDDMM method for Z entries of an [N, K] weight: SPARSEFORMER_SDD_METHOD when set, else the
    measured best. CPU (torch): the gathered products below 1/64 of the entries, the BLAS above. GPU: the
    dense cuBLAS product and a gather at every density measured so far (H200, T=65536, 2048 x 8192 at
    1/1024: 2.7 ms against 5.0 ms for the Triton SDDMM; docs/support-dw.md)."""
    forced = os.environ.get("SPARSEFORMER_SDD_METHOD") or None
    if forced is not None:
        if forced not in SDD_METHODS:
            raise ValueError(f"SPARSEFORMER_SDD_METHOD={forced!r} is not one of {SDD_METHODS}")
        return forced
    if backend == "torch":
        return "gemm" if z * 64 >= n * k else "gather"
    return "gemm"


def sdd(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor, backend: str = "torch",
        method: str | None = None) -> Tensor:
    """(dy^T x) at the entries (rows[z], cols[z]), fp32 [Z]; the dW of a support. `method` (default:
    sdd_method's choice) is one of SDD_METHODS; "sddmm" needs the Triton backend (or the interpreter)."""
    method = method or sdd_method(backend, rows.numel(), dy.shape[1], x.shape[1])
    if method == "gemm":
        return sdd_gemm(dy, x, rows, cols)
    if method == "gather" or x.dtype == torch.float64:
        return sdd_gather(dy, x, rows, cols)
    if method != "sddmm":
        raise ValueError(f"sdd: method {method!r} is not one of {SDD_METHODS}")
    from .triton_kernels import sddmm_triton
    dy, x = tokens_major(dy), tokens_major(x)    # every gathered column one coalesced load
    return sddmm_triton(dy, x.to(dy.dtype), rows, cols)


class FailedKernels:
    """The auto-chosen methods that raised in this process, with the reason (process-wide: a kernel that
    does not compile here will not compile on the next call either)."""

    def __init__(self):
        self._reasons: dict[str, str] = {}

    def __contains__(self, method: str) -> bool:
        return method in self._reasons

    def record(self, method: str, error: Exception) -> None:
        self._reasons[method] = f"{type(error).__name__}: {error}"
        log.warning("sparse matmul: method %r failed (%s); using masked dense instead from now on",
                    method, self._reasons[method].splitlines()[0][:200])

    def clear(self) -> None:
        self._reasons.clear()


FAILED = FailedKernels()


def usable(method: str) -> bool:
    """Whether `method` will run as itself (not replaced by masked dense after a failure)."""
    return method not in FAILED


def run_planned(a: Tensor, w: Tensor, plan, op: str, bias: Tensor | None = None) -> Tensor:
    """dds by the method `plan` (a LinearPlan) chose for this op, with the fallback of the module docstring."""
    method = plan.fwd if op == "fwd" else plan.dx
    if plan.forced or not methods.get(method).jit:
        return dds(a, w, plan.sw, op, method, bias)
    if method in FAILED:
        return dds_ref(a, w, op, bias)
    try:
        return dds(a, w, plan.sw, op, method, bias)
    except Exception as e:   # compile/launch failure of a Triton kernel
        FAILED.record(method, e)
        return dds_ref(a, w, op, bias)
