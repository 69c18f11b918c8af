"""The autograd Function of a sparse linear layer and its public functional `sparse_linear`.

y = x W^T + b with x [..., K] flattened to M rows once and restored on exit; the forward and dX products
run the planned methods (launch.run_planned), dW follows the layer's DwPolicy (dense by default) and db is
an fp32 sum. Under autocast the product runs in the autocast dtype and reads the fp32 weight directly; dW
and db come back in the parameters' dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import methods
from .launch import run_planned, tokens_major, usable
from .plan import LinearPlan, plan_linear
from .policy import DwPolicy

__all__ = ["sparse_linear"]


def _wants_tokens_major(method: str) -> bool:
    return methods.get(method).tokens_major and usable(method)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: LinearPlan, policy: DwPolicy | None):   # x [..., K], weight [N, K]
        K = x.shape[-1]
        x2 = x.reshape(-1, K)                                   # flatten once, restore on exit
        if _wants_tokens_major(plan.fwd):
            x2 = tokens_major(x2)                               # the copy dW reuses below
        with torch.autocast(device_type=x.device.type, enabled=False):
            y2 = run_planned(x2, weight, plan, "fwd", bias)
        ctx.save_for_backward(x2, weight)
        ctx.plan, ctx.policy, ctx.x_shape = plan, policy, x.shape
        ctx.has_bias, ctx.bias_dtype = bias is not None, (bias.dtype if bias is not None else None)
        return y2.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        plan = ctx.plan
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx = dw = db = None
        if _wants_tokens_major(plan.dx):
            dy2 = tokens_major(dy2)                 # once, for dX and a support dW
        if need_dx:
            dx = run_planned(dy2, weight, plan, "dx").reshape(ctx.x_shape)
        if need_dw:
            policy = ctx.policy
            if policy is None or policy.mode == "dense":
                dw = (dy2.t() @ x2).to(weight.dtype)
            else:
                dw = policy.grad(dy2, x2, weight, plan.sw, plan.backend)
        if need_db and ctx.has_bias:
            db = dy2.float().sum(0).to(ctx.bias_dtype)
        return dx, dw, db, None, None


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the products run in: the autocast dtype when autocast is on, else x's (which must be W's)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.is_floating_point():
        return torch.get_autocast_dtype(dev)
    if x.dtype != weight.dtype:
        raise RuntimeError(f"sparse_linear: x is {x.dtype} but the weight is {weight.dtype}; cast one of them "
                           f"or run under torch.autocast")
    return x.dtype


def sparse_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, plan: LinearPlan | None = None,
                  dw: DwPolicy | None = None, backend: str | None = None, method: str | None = None) -> Tensor:
    """y = x W^T + b with W dense-shaped and zero off its support; autograd for x, W and b.

    `plan` (from `plan_linear`) can be cached by the caller while W's support is unchanged; without one it is
    made here. `dw` sets the dW policy (default: dense). Matches F.linear(x, W, b) up to float rounding."""
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"sparse_linear: x {tuple(x.shape)} does not fit weight {tuple(weight.shape)}")
    x = x.to(compute_dtype(x, weight))
    if plan is None:
        plan = plan_linear(weight, dtype=x.dtype, backend=backend, method=method)
    return _SparseLinearFn.apply(x, weight, bias, plan, dw)
