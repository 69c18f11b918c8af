"""SparseAdamW: the optimizer step of SPEC §2.4, with the top-k projection inside it.

One step, in this order:
1. global gradient RMS normalisation: rms = ||g||_2 / sqrt(N) over every parameter with a gradient,
   g <- g / (rms + 1e-5) (always, not only when rms > 1);
2. Adam with dense moments (beta1, beta2, eps; bias-corrected), p <- p - lr * m_hat / (sqrt(v_hat) + eps);
3. projection: every group with an integer "k" keeps exactly its k largest |p| (sparseformer.kernels,
   one batched call), optionally protecting each row's or column's top-j ("protect": (j, "rows"|"cols"));
4. decoupled weight decay p <- p - lr * weight_decay * p (after the projection, so zeros stay zero).

Each param group holds: "params", "lr", "k" (int or None for dense), "protect" (None or (j, "rows"|"cols")),
"weight_decay", and optionally "name". The trainer sets group["lr"] and group["k"] from the schedules
before every step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import kernels

GRAD_RMS_EPS = 1e-5


class SparseAdamW(torch.optim.Optimizer):
    """Adam + top-k projection + decoupled weight decay (SPEC §2.4); see the module docstring."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.95), eps: float = 0.1, weight_decay: float = 0.0,
                 grad_rms_norm: bool = True, backend: str | None = None):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"SparseAdamW: bad hyperparameters lr={lr} betas={betas} eps={eps}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, k=None, protect=None,
                        name=None)
        super().__init__(params, defaults)
        self.grad_rms_norm = grad_rms_norm
        self.backend = backend

    @torch.no_grad()
    def grad_scale(self) -> float:
        """The factor 1/(rms + 1e-5) that normalises the global gradient RMS (1.0 when disabled)."""
        if not self.grad_rms_norm:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        n = sum(t.numel() for t in grads)
        sq = torch.stack([t.float().pow(2).sum() for t in grads]).sum()
        rms = math.sqrt(float(sq) / n)
        return 1.0 / (rms + GRAD_RMS_EPS)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = self.grad_scale()
        to_project: list[Tensor] = []
        ks: list[int] = []
        protect: list[int | None] = []
        names: list[str] = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                g = p.grad.mul(scale)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bc1 = 1 - beta1 ** t
                bc2 = 1 - beta2 ** t
                denom = (v / bc2).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denom, value=-group["lr"] / bc1)
                if group["k"] is not None:
                    view, j = _protect_view(p, group["protect"])
                    to_project.append(view)
                    ks.append(int(group["k"]))
                    protect.append(j)
                    names.append(group["name"] or f"param{len(names)}")
        if to_project:
            kernels.project_topk_(to_project, ks, protect_per_row=protect, names=names, backend=self.backend)
        for group in self.param_groups:
            wd = group["weight_decay"]
            if wd:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1 - group["lr"] * wd)
        return loss


def _protect_view(p: Tensor, protect) -> tuple[Tensor, int | None]:
    """The view whose rows carry the protection, and j (None when unprotected)."""
    if not protect:
        return p.data, None
    j, axis = protect
    if axis == "rows":
        return p.data, int(j)
    if axis == "cols":
        return p.data.t(), int(j)
    raise ValueError(f"protect axis must be 'rows' or 'cols', got {axis!r}")
