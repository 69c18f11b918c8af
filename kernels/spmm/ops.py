"""The sparse products as torch.library custom ops, so that torch.compile(fullgraph=True) sees no graph break.

Inside a compiled graph the planner's host-side work (building the SparseWeight, reading nnz) cannot run
as traced ops, and a LinearPlan object cannot be a graph input. So under torch.compile a layer chooses its
method outside the graph (`choose_method`: from the density it knows, no weight pass; the choice is a
constant of the compiled graph, so a changing k never recompiles: every method computes the same product,
only the speed differs), and each product is one opaque op:
  sparseformer::dds(a [M, K|N], w [N, K], bias [N] | None, op "fwd"|"dx", method) -> [M, N|K]
with a fake implementation (shapes only) and autograd (dX by the same op, a dense dW, an fp32 db). The op
builds the format from the weight it is given, as the eager path does at every forward by default.
`linear(x, w, bias, method)` is the layer's functional on top; "dense" runs F.linear itself, which the
compiler can fuse.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sparse_format import compact
from . import methods
from .launch import dds

__all__ = ["linear"]


@torch.library.custom_op("sparseformer::dds", mutates_args=())
def dds_op(a: Tensor, w: Tensor, bias: Optional[Tensor], op: str, method: str) -> Tensor:
    m = methods.get(method)
    sw = compact(w) if m.fmt is not None else None
    if m.fits is not None and not m.fits(sw, op == "dx"):
        method = m.fallback
    return dds(a, w, sw, op, method, bias)


@dds_op.register_fake
def _(a, w, bias, op, method):
    n, k = w.shape
    return a.new_empty(a.shape[0], n if op == "fwd" else k)


def _setup(ctx, inputs, output):
    a, w, bias, op, method = inputs
    ctx.save_for_backward(a, w)
    ctx.method = method
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy):
    a, w = ctx.saved_tensors
    need_a, need_w, need_b = ctx.needs_input_grad[:3]
    da = dds_op(dy, w, None, "dx", ctx.method) if need_a else None
    dw = (dy.t() @ a).to(w.dtype) if need_w else None
    db = dy.float().sum(0).to(ctx.bias_dtype) if need_b and ctx.bias_dtype is not None else None
    return da, dw, db, None, None


dds_op.register_autograd(_backward, setup_context=_setup)


def linear(x: Tensor, w: Tensor, bias: Tensor | None, method: str) -> Tensor:
    """y = x W^T + b by `method` (x [..., K] in the compute dtype, w [N, K] dense-with-zeros)."""
    if method == "dense":
        return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))
    y = dds_op(x.reshape(-1, x.shape[-1]), w, bias, "fwd", method)
    return y.view(*x.shape[:-1], w.shape[0])
