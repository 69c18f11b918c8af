"""The AdamW family: the SparseAdamW step (Adam, top-k projection, decoupled weight decay) over many tensors.

Reading order: reference.py (the math and its torch reference) -> tables.py (the tables and the
`AdamKernels` interface) -> triton_kernels.py / cuda_kernels.py (the fused Adam pass) -> device.py (the
launcher: Adam pass, then the projection of the top-k family) -> this file (the public op; dispatch.py
picks the backend). docs/kernels.md describes the fused pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..dispatch import resolve
from ..topk import Comm, CommStats, TopkState
from ..topk.backends import kernel_set as topk_kernel_set
from .device import step_device
from .reference import (GRAD_RMS_EPS, AdamWTensor, fusable, grad_norms, grad_rms_scale, scale_from_norms,
                        step_torch)
from .tables import AdamKernels

__all__ = ["GRAD_RMS_EPS", "AdamKernels", "AdamWTensor", "grad_norms", "grad_rms_scale", "kernel_set",
           "scale_from_norms", "sparse_adamw_step_"]


def kernel_set(backend: str) -> AdamKernels:
    """The fused Adam pass of a device backend ("triton" or "cuda")."""
    if backend == "triton":
        from .triton_kernels import TritonAdamKernels
        return TritonAdamKernels()
    if backend == "cuda":
        from .cuda_kernels import CudaAdamKernels
        return CudaAdamKernels()
    raise ValueError(f"no fused Adam kernels for backend {backend!r}")


def sparse_adamw_step_(items: Sequence[AdamWTensor], *, grad_rms_norm: bool = True, backend: str | None = None,
                       state: TopkState | None = None, comm: Comm | None = None, grad_scale=None
                       ) -> CommStats | None:
    """Run one SparseAdamW step in place over `items` (see reference.py for the math).

    `state` warm-starts the projection of the device backends from the previous step's thresholds (and
    every backend's across ranks). Across ranks (FSDP: each item's param, grad and moments are this rank's
    rows of a tensor of `global_shape` from `row_offset`), pass `comm`: the projection is then exact over
    the whole tensors (topk/sharded.py) and the collectives it made are returned. `grad_scale` (a float or
    a 0-d tensor) replaces the gradient-RMS scale computed from the items' gradients: across ranks the
    caller computes it from the global gradient norm.
    """
    items = list(items)
    if not items:
        return CommStats() if comm is not None else None
    if comm is not None and any(it.k is not None and it.global_shape is None for it in items):
        raise ValueError("sparse_adamw_step_: with comm, every projected item needs its global_shape")
    chosen = resolve("sparse_adamw_step_", items[0].param.device, backend)
    if chosen == "torch" or not fusable(items):
        return step_torch(items, grad_rms_norm, chosen, comm=comm, grad_scale=grad_scale, state=state)
    return step_device(items, grad_rms_norm, kernel_set(chosen), topk_kernel_set(chosen), state, comm=comm,
                       grad_scale=grad_scale)
