"""The kernel set of each backend (dispatch.py decides which backend runs; this maps the answer)."""

from __future__ import annotations

from .tables import TopkKernels


def kernel_set(backend: str) -> TopkKernels:
    """The kernel set of a backend ("torch", "triton" or "cuda"); Triton is imported only when asked for."""
    if backend == "torch":
        from .torch_kernels import TorchTopkKernels
        return TorchTopkKernels()
    if backend == "triton":
        from .triton_kernels import TritonTopkKernels
        return TritonTopkKernels()
    if backend == "cuda":
        from .cuda_kernels import CudaTopkKernels
        return CudaTopkKernels()
    raise ValueError(f"no top-k kernels for backend {backend!r}")
