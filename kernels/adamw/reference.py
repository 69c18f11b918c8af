"""The SparseAdamW step over many tensors: the contract and its torch reference.

One step, in this order, for every parameter that has a gradient:
1. g <- g * s with s = 1 / (rms + 1e-5), rms = ||all gradients||_2 / sqrt(N) (one s for all tensors);
2. m <- m + (1 - b1)(g - m); v <- b2 v + (1 - b2) g^2;
   p <- p - (lr / (1 - b1^t)) * m / (sqrt(v / (1 - b2^t)) + eps);
3. tensors with a k keep exactly their top-k |p| (topk/reference.py rules, optional per-row or per-column
   protection);
4. p <- p * (1 - lr * weight_decay) (after the projection, so zeros stay zero).

The order and the constants follow Gao et al. 2025 (arXiv 2511.13653) and its released training code;
docs/kernels.md describes the fused device pass (device.py) that computes the same step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..topk import Comm, CommStats, project_topk_, project_topk_sharded_, protect_view

GRAD_RMS_EPS = 1e-5


@dataclass
class AdamWTensor:
    """One parameter's slice of a step: tensors, hyperparameters and projection rule."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: int                   # this step's count (1 on the first step)
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    k: int | None = None        # None: dense (no projection)
    protect: tuple | None = None  # None or (j, "rows" | "cols")
    name: str = "param"
    global_shape: tuple | None = None  # across ranks: param is rows [row_offset, ...) of a tensor of this shape
    row_offset: int = 0


def grad_rms_scale(grads: Sequence[Tensor], *, on_device: bool = False):
    """s = 1 / (rms + 1e-5) of all gradients (non-empty); a float, or a 0-d float32 tensor on their device.

    Both forms come from the same float32 per-tensor norms, so the torch and device paths scale alike.
    """
    return scale_from_norms(grad_norms(grads), sum(g.numel() for g in grads), on_device=on_device)


def grad_norms(grads: Sequence[Tensor]) -> list[Tensor]:
    """Per-tensor float32 L2 norms, the terms of `grad_rms_scale` (none for no tensors)."""
    if not grads:
        return []
    return list(torch._foreach_norm([g if g.dtype == torch.float32 else g.float() for g in grads]))


def scale_from_norms(norms: Sequence[Tensor], n: int, *, on_device: bool = False):
    """1 / (rms + 1e-5) from per-tensor norms over n entries in all (a caller may swap some tensors' norms)."""
    sq = torch.stack(list(norms)).double().pow(2).sum()
    scale = (1.0 / (torch.sqrt(sq / n) + GRAD_RMS_EPS)).float()
    return scale if on_device else float(scale)


def fusable(items: Sequence[AdamWTensor]) -> bool:
    """Whether the fused device pass takes `items`: p, g, m, v contiguous, of one dtype among fp32/bf16/fp16."""
    return all(it.param.dtype in (torch.float32, torch.bfloat16, torch.float16)
               and it.grad.dtype == it.param.dtype and it.exp_avg.dtype == it.param.dtype
               and it.exp_avg_sq.dtype == it.param.dtype and it.param.is_contiguous() and it.grad.is_contiguous()
               and it.exp_avg.is_contiguous() and it.exp_avg_sq.is_contiguous() for it in items)


def step_torch(items: Sequence[AdamWTensor], grad_rms_norm: bool, backend: str, *, comm: Comm | None = None,
               grad_scale=None, state=None) -> CommStats | None:
    """The reference: plain torch ops, one tensor at a time, then one batched projection with `backend`
    (across ranks with `comm`, when the items are shards). `grad_scale` replaces the computed scale."""
    scale = grad_scale if grad_scale is not None else grad_rms_scale([it.grad for it in items]) if grad_rms_norm \
        else 1.0
    views, ks, prot, names, projected = [], [], [], [], []
    for it in items:
        p, m, v = it.param, it.exp_avg, it.exp_avg_sq
        g = it.grad.mul(scale)
        m.lerp_(g, 1 - it.beta1)
        v.mul_(it.beta2).addcmul_(g, g, value=1 - it.beta2)
        bc1 = 1 - it.beta1 ** it.step
        bc2 = 1 - it.beta2 ** it.step
        denom = (v / bc2).sqrt_().add_(it.eps)
        p.addcdiv_(m, denom, value=-it.lr / bc1)
        if it.k is not None:
            view, j = protect_view(p, it.protect)
            views.append(view); ks.append(int(it.k)); prot.append(j); names.append(it.name); projected.append(it)
    stats = None
    if comm is not None:
        stats = project_topk_sharded_([it.param for it in projected], ks, [it.global_shape for it in projected],
                                      [it.row_offset for it in projected], comm,
                                      protect=[it.protect for it in projected], names=names, backend=backend,
                                      state=state)
    elif views:
        project_topk_(views, ks, protect_per_row=prot, names=names, backend=backend)
    for it in items:
        if it.weight_decay:
            it.param.mul_(1 - it.lr * it.weight_decay)
    return stats
