"""One place that decides which backend runs an op.

Backends: "torch" (pure torch, any device), "triton" (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), "cuda" (the compiled extension sparseformer.kernels._C, CUDA tensors only).

`resolve(op, device, backend)` answers, in this order: the `backend` argument, then the
SPARSEFORMER_BACKEND environment variable, then the default: CUDA tensors go to "cuda" when the extension
provides every function the op needs (CUDA_OPS), else "triton"; CPU tensors go to "torch" (the
interpreter is for tests: it is correct but slow, so it runs only when asked for by name). Forcing a
backend that cannot run raises with the reason. Each family maps the answer to its kernel set; this
module imports none of them.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from ._env import INTERPRET
from ._ext import load as load_extension

BACKENDS = ("torch", "triton", "cuda")

_TOPK = ("topk_sample", "topk_hist", "topk_apply", "topk_scatter")
# The extension functions each op needs; an op listed with () has no CUDA version.
CUDA_OPS: dict[str, tuple[str, ...]] = {
    "topk_mask": _TOPK,
    "project_topk_": _TOPK,
    "project_topk_sharded_": _TOPK,
    "sparse_adamw_step_": ("adamw",) + _TOPK,
    "spmm": (),
    "emit_formats": (),
}


@lru_cache(maxsize=None)
def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


def cuda_ext():
    """The compiled extension module, or None."""
    return load_extension()[0]


def available(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Map each backend to None when it can run on `device`, else to the reason it cannot."""
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    out: dict[str, str | None] = {"torch": None}
    reason = _triton_reason()
    if reason is None and dev.type != "cuda" and not INTERPRET:
        reason = "triton runs CPU tensors only under TRITON_INTERPRET=1"
    out["triton"] = reason
    ext, reason = load_extension()
    if reason is None and dev.type != "cuda":
        reason = "the CUDA extension runs CUDA tensors only"
    out["cuda"] = reason
    return out


def _missing_cuda_functions(op: str) -> list[str]:
    ext = cuda_ext()
    return [f for f in CUDA_OPS.get(op, ()) if ext is None or not hasattr(ext, f)]


def resolve(op: str, device: torch.device, backend: str | None = None, *, has_cuda_op: bool | None = None) -> str:
    """Pick the backend for `op` on `device`: the argument, then SPARSEFORMER_BACKEND, then the default.

    `has_cuda_op` overrides the CUDA_OPS table (whether the extension implements `op`).
    """
    chosen = backend or os.environ.get("SPARSEFORMER_BACKEND") or None
    if chosen == "cuda" and has_cuda_op is False:   # an op without an extension kernel: Triton serves "cuda"
        chosen = "triton"
    has_cuda = has_cuda_op if has_cuda_op is not None else bool(CUDA_OPS.get(op)) and not _missing_cuda_functions(op)
    if chosen is not None:
        if chosen not in BACKENDS:
            raise ValueError(f"{op}: unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
        reason = available(device)[chosen]
        if reason is None and chosen == "cuda" and has_cuda_op is None and CUDA_OPS.get(op) and not has_cuda:
            reason = f"the extension lacks {', '.join(_missing_cuda_functions(op))} (rebuild it)"
        if reason is not None:
            raise RuntimeError(f"{op}: backend {chosen!r} is unavailable on {device}: {reason}")
        return chosen
    if device.type == "cuda":
        avail = available(device)
        if avail["cuda"] is None and has_cuda:
            return "cuda"
        if avail["triton"] is None:
            return "triton"
    return "torch"
