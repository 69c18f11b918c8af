"""The AdamW family: the SparseAdamW step (Adam, top-k projection, decoupled weight decay) over many tensors.

Reading order: reference.py (the math and its torch reference) -> tables.py (the tables and the
`AdamKernels` interface) -> triton_kernels.py / cuda_kernels.py (the fused Adam pass) -> device.py (the
launcher: Adam pass, then the projection of the top-k family) -> this file (the public op; dispatch.py
picks the backend). docs/kernels.md describes the fused pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..dispatch import resolve
from ..topk import TopkState, protect_view  # noqa: F401  (protect_view: the one protection view, topk/reference.py)
from ..topk import kernel_set as topk_kernel_set
from .device import step_device
from .reference import GRAD_RMS_EPS, AdamWTensor, fusable, grad_rms_scale, step_torch
from .tables import AdamKernels

__all__ = ["GRAD_RMS_EPS", "AdamKernels", "AdamWTensor", "grad_rms_scale", "kernel_set", "sparse_adamw_step_"]


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
                       state: TopkState | None = None) -> None:
    """Run one SparseAdamW step in place over `items` (see reference.py for the math).

    `state` warm-starts the projection of the device backends from the previous step's thresholds.
    """
    items = list(items)
    if not items:
        return
    chosen = resolve("sparse_adamw_step_", items[0].param.device, backend)
    if chosen == "torch" or not fusable(items):
        step_torch(items, grad_rms_norm, chosen)
    else:
        step_device(items, grad_rms_norm, kernel_set(chosen), topk_kernel_set(chosen), state)
