"""Whole-model state for checkpoints: a distributed run writes the same files as a single process.

`full_state` returns, on rank 0, the model's state dict and each parameter's optimizer state as whole
tensors on the CPU (the other ranks get None). Under DDP rank 0 already holds them; under FSDP2 every
sharded tensor is gathered one at a time (an all-gather of its padded row blocks), so the peak extra memory
is one whole tensor per rank plus rank 0's CPU copy of the model and its moments. Loading goes the other
way: every rank reads the whole checkpoint before wrapping, and ShardedSparseAdamW.shard_state_ keeps its
rows of the moments. So a run directory resumes with any number of ranks and either mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .context import DistContext, all_gather_rows
from .optim import is_dtensor, row_block
from .wrap import unwrap


def gather_rows(local: Tensor, rows: int, ctx: DistContext) -> Tensor:
    """The whole tensor from every rank's dim-0 block (torch.chunk layout; `local` holds this rank's rows)."""
    chunk = -(-rows // ctx.world_size)
    padded = torch.zeros((chunk, *local.shape[1:]), dtype=local.dtype, device=ctx.comm_device)
    padded[:local.shape[0]] = local
    out = torch.empty((chunk * ctx.world_size, *local.shape[1:]), dtype=local.dtype, device=ctx.comm_device)
    with ctx.collective("gathering the checkpoint"):
        all_gather_rows(out, padded)
    return out[:rows]


def _whole(t: Tensor, like, ctx: DistContext) -> Tensor:
    """`t` (a DTensor, or the local rows of the DTensor `like`) as a whole CPU tensor."""
    if is_dtensor(t):
        t, like = t.to_local(), t
    if like is None or not is_dtensor(like):
        return t.detach().cpu()
    row_block(like)
    return gather_rows(t.detach(), like.shape[0], ctx).cpu()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext
               ) -> tuple[dict[str, Tensor] | None, dict[str, dict[str, Any]] | None]:
    """(state dict, {parameter name: {"step", "exp_avg", "exp_avg_sq"}}) as whole CPU tensors on rank 0,
    (None, None) elsewhere. Every rank must call it (FSDP2 gathers)."""
    model = unwrap(model)
    if ctx.mode != "fsdp":
        if not ctx.is_main:
            return None, None
        states = {}
        if optimizer is not None:          # in parameter order, so a resumed run writes the same bytes
            states = {n: dict(optimizer.state[p]) for n, p in model.named_parameters() if optimizer.state.get(p)}
        return model.state_dict(), states
    tensors = {}
    for name, t in model.state_dict().items():
        whole = _whole(t, None, ctx)
        if ctx.is_main:
            tensors[name] = whole
    states = {}
    if optimizer is not None:
        for name, p in model.named_parameters():
            st = optimizer.state.get(p)
            if not st:
                continue
            whole = {key: _whole(st[key], p, ctx) for key in ("exp_avg", "exp_avg_sq")}
            if ctx.is_main:
                states[name] = {"step": int(st["step"]), **whole}
    return (tensors, states) if ctx.is_main else (None, None)
