"""One place that decides which backend runs an op.

Backends: "torch" (pure-torch reference, any device), "triton" (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cuda" (the compiled extension sparseformer.kernels._C, CUDA tensors only).

Resolution order for `backend=None`: the SPARSEFORMER_BACKEND environment variable, then the default:
CUDA tensors go to "cuda" when the extension provides the op, else "triton"; CPU tensors go to "torch"
(the interpreter is for tests: it is correct but slow, so it runs only when asked for by name). Forcing a
backend that is unavailable raises with the reason.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from ._env import INTERPRET

BACKENDS = ("torch", "triton", "cuda")


@lru_cache(maxsize=None)
def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def _cuda_ext():
    """Return (module, None) when the CUDA extension loads (kernels/_ext.py), else (None, reason)."""
    from . import _ext
    return _ext.load()


def cuda_ext():
    """The compiled extension module, or None."""
    return _cuda_ext()[0]


def kernel_set(backend: str):
    """The streaming top-k passes of a device backend ("triton" or "cuda"), as used by topk_device.py."""
    if backend == "triton":
        from .topk_triton import TritonTopkKernels
        return TritonTopkKernels
    if backend == "cuda":
        from .topk_cuda import CudaTopkKernels
        return CudaTopkKernels
    raise ValueError(f"no device kernels for backend {backend!r}")


def available(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Map each backend to None when it can run on `device`, else to the reason it cannot."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    out: dict[str, str | None] = {"torch": None}
    reason = _triton_reason()
    if reason is None and dev.type != "cuda" and not INTERPRET:
        reason = "triton runs CPU tensors only under TRITON_INTERPRET=1"
    out["triton"] = reason
    ext, reason = _cuda_ext()
    if reason is None and dev.type != "cuda":
        reason = "the CUDA extension runs CUDA tensors only"
    out["cuda"] = reason
    return out


def resolve(op: str, device: torch.device, backend: str | None = None, *, has_cuda_op: bool | None = None) -> str:
    """Pick the backend for `op` on `device`: the argument, then SPARSEFORMER_BACKEND, then the default."""
    chosen = backend or os.environ.get("SPARSEFORMER_BACKEND") or None
    if chosen == "cuda" and has_cuda_op is False:   # an op without an extension kernel: Triton serves "cuda"
        chosen = "triton"
    if chosen is not None:
        if chosen not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
        reason = available(device)[chosen]
        if reason is not None:
            raise RuntimeError(f"{op}: backend {chosen!r} is unavailable on {device}: {reason}")
        return chosen
    avail = available(device)
    if device.type == "cuda":
        ext = cuda_ext()
        if avail["cuda"] is None and (has_cuda_op if has_cuda_op is not None else ext is not None):
            return "cuda"
        if avail["triton"] is None:
            return "triton"
        return "torch"
    return "torch"
