"""Run a product by method name (the registry in methods.py), and keep training alive when a kernel fails.

`dds(a, w, sw, op, method, bias)`: op "fwd": Y = a W^T (+ bias, fused) [M, N]; op "dx": dX = a W [M, K].
`sdd(dy, x, rows, cols, backend)`: (dy^T x) at the listed entries, fp32 [Z] (the dW of a support).
`run_planned` runs the method a LinearPlan chose. A Triton method the dispatcher chose by itself (not one
the caller forced) that raises, typically a kernel that does not compile on some Triton version, is
recorded in FAILED and replaced by masked dense for the rest of the process, with one warning: a training
run must not die on it. Forced methods raise as usual (tests and benchmarks force them).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from . import methods
from .reference import OPS, dds_ref
from .torch_kernels import sdd_torch

__all__ = ["FAILED", "dds", "run_planned", "sdd", "tokens_major"]

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


def sdd(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor, backend: str = "torch") -> Tensor:
    """(dy^T x) at the entries (rows[z], cols[z]), fp32 [Z]; the dW of a support."""
    if backend == "torch" or x.dtype == torch.float64:
        return sdd_torch(dy, x, rows, cols)
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
