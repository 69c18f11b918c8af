"""AbsTopK for activations: keep the k largest-|x| entries of each row (last dimension) with their sign.

    y = abstopk(x, k)          # autograd: the gradient flows to the kept entries only

Ties go to the lowest column, so every backend gives the same bits (reference.py states the rule). The
torch backend (CPU, and any device on request) uses torch.topk for the k-th largest magnitude; the Triton
backend (CUDA tensors) finds it by a per-row threshold search over the magnitude bits, reading x once
(triton_kernels.py). Backend choice as for every op here (dispatch.py): `backend=` or SPARSEFORMER_BACKEND,
else Triton on CUDA and torch on the CPU. There is no CUDA-extension AbsTopK: "cuda" runs the Triton one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import resolve
from .reference import abstopk_ref, keys, mask_from_output, masked_grad_torch, select_torch

__all__ = ["abstopk", "abstopk_ref", "abstopk_rows", "keys", "mask_from_output"]


def _backend(device: torch.device, backend: str | None) -> str:
    return resolve("abstopk", device, backend, has_cuda_op=False)     # no extension kernel: "cuda" -> Triton


def abstopk_rows(x: Tensor, k: int, backend: str = "torch") -> tuple[Tensor, Tensor, Tensor]:
    """(y, thr, cut) of x [M, C] for 0 <= k <= C on a resolved backend (no autograd)."""
    if backend == "triton":
        from .triton_kernels import abstopk_fwd_triton
        return abstopk_fwd_triton(x, k)
    return select_torch(x, k)[:3]


def _as_rows(x: Tensor) -> Tensor:
    """x as [M, C] (C = last dim): a view when the strides allow it, else a copy."""
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-1])


class _AbsTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, k: int, backend: str) -> Tensor:
        ctx.backend = backend
        if backend == "triton":
            y, thr, cut = abstopk_rows(_as_rows(x), k, backend)
            out = y.view(x.shape)
            ctx.save_for_backward(out, thr, cut)  # the output, not a mask: the next op usually keeps it anyway
        else:
            y, _, _, idx = select_torch(_as_rows(x), k)
            out = y.view(x.shape)
            ctx.save_for_backward(idx)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        g2 = _as_rows(g)
        if ctx.backend == "triton":
            from .triton_kernels import abstopk_bwd_triton
            out, thr, cut = ctx.saved_tensors
            dx = abstopk_bwd_triton(g2, out.view(-1, out.shape[-1]), thr, cut)
        else:
            (idx,) = ctx.saved_tensors
            dx = masked_grad_torch(g2, idx)
        return dx.view(g.shape), None, None


def abstopk(x: Tensor, k: int, *, backend: str | None = None) -> Tensor:
    """Keep the k largest-|x| entries of each row of x (last dim) with their sign, zero the rest; ties to the
    lowest column. k >= the row width returns x itself; k <= 0 keeps nothing. Differentiable in x."""
    if x.ndim == 0:
        raise ValueError("abstopk: x must have at least one dimension (rows are its last dimension)")
    if k >= x.shape[-1] or x.numel() == 0:
        return x
    with torch.profiler.record_function("sparseformer::abstopk"):
        return _AbsTopK.apply(x, max(int(k), 0), _backend(x.device, backend))
