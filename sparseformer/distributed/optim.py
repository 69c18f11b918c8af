"""SparseAdamW on FSDP2's sharded parameters: Adam on this rank's rows, the top-k exact over whole tensors.

Each parameter is a DTensor sharded along dim 0 in torch.chunk blocks (rank r holds rows [r*c, r*c + n_r)
with c = ceil(rows / N); the last blocks may be short or empty). The step hands the local rows, with their
place in the whole tensor, to the kernels' sharded step (sparseformer.kernels.sparse_adamw_step_ with a
Comm): every rank derives the same thresholds from histograms summed over ranks, so the kept set is what
one process keeps on the gathered tensor (docs/kernels.md, "Across ranks"). The gradient-RMS scale needs
the global gradient norm: one float64 all-reduce of the summed squared norms of the local gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ..kernels.adamw import GRAD_RMS_EPS, AdamWTensor
from ..kernels.topk import Comm, CommStats
from ..sparsity.optimizer import SparseAdamW
from .context import DistContext, all_gather_rows


def is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def row_block(p) -> tuple[int, int]:
    """(first row, rows held) of this rank's block of a DTensor sharded along dim 0 (FSDP2's layout)."""
    from torch.distributed.tensor import Shard
    if p.device_mesh.ndim != 1 or len(p.placements) != 1 or p.placements[0] != Shard(0):
        raise ValueError(f"a parameter sharded as {p.placements} over a {p.device_mesh.ndim}-D mesh; "
                         f"ShardedSparseAdamW takes FSDP2's Shard(0) on one mesh dimension")
    rows, world = p.shape[0], p.device_mesh.size()
    chunk = -(-rows // world)
    first = min(p.device_mesh.get_local_rank() * chunk, rows)
    here = max(0, min(chunk, rows - first))
    local = p.to_local().shape[0]
    if local != here:
        raise ValueError(f"a shard of {local} rows where FSDP2's dim-0 blocks give {here} (rows {rows}, "
                         f"{world} ranks)")
    return first, here


def make_comm(ctx: DistContext) -> Comm:
    """The collectives of the projection across ranks, from torch.distributed."""
    dist = torch.distributed

    def all_reduce(t: Tensor) -> None:
        with ctx.collective("selecting the top-k"):
            dist.all_reduce(t)

    def all_gather(t: Tensor) -> Tensor:
        flat = t.contiguous().reshape(-1)
        out = torch.empty(ctx.world_size * flat.numel(), dtype=t.dtype, device=t.device)   # gloo: ranks along dim 0
        with ctx.collective("selecting the top-k"):
            all_gather_rows(out, flat)
        return out.view(ctx.world_size, *t.shape)

    return Comm(ctx.rank, ctx.world_size, all_reduce, all_gather)


class ShardedSparseAdamW(SparseAdamW):
    """SparseAdamW for a model sharded by FSDP2 (every parameter a Shard(0) DTensor); see the module
    docstring. `last_comm` holds the collectives of the last step (the projection's CommStats plus the
    gradient-norm all-reduce), `comm` may be replaced by any Comm with the same rank and world size."""

    def __init__(self, params, ctx: DistContext, **kwargs):
        super().__init__(params, **kwargs)
        self.ctx = ctx
        self.comm = make_comm(ctx)
        self.last_comm: CommStats | None = None
        for group in self.param_groups:
            for p in group["params"]:
                if not is_dtensor(p):
                    raise ValueError("ShardedSparseAdamW: every parameter must be sharded by fully_shard (a "
                                     "DTensor); build it after wrapping the model")
                row_block(p)

    def _local(self, p) -> tuple[Tensor, Tensor, dict]:
        first, _ = row_block(p)
        return p.to_local(), p.grad.to_local(), {"global_shape": tuple(p.shape), "row_offset": first}

    def _step(self, items: list[AdamWTensor]) -> None:
        scale = self._global_grad_scale(items) if self.grad_rms_norm else 1.0
        stats = kernels.sparse_adamw_step_(items, grad_rms_norm=self.grad_rms_norm, backend=self.backend,
                                           state=self._topk_state, comm=self.comm, grad_scale=scale)
        stats = stats if stats is not None else CommStats()
        stats.calls.insert(0, ("all_reduce", "gradient norm", 16))
        self.last_comm = stats

    def _global_grad_scale(self, items: list[AdamWTensor]) -> Tensor:
        """1 / (rms + 1e-5) of the whole gradient (all ranks' rows of every tensor), the same on every rank
        (a 0-d float32 tensor): one float64 all-reduce adds the ranks' `_rms_terms`. The result differs
        from one process's scale (kernels/adamw/reference.py, one norm per whole tensor) only in rounding."""
        terms = self._rms_terms(items)
        with self.ctx.collective("summing the gradient norm"):
            torch.distributed.all_reduce(terms)
        return (1.0 / (torch.sqrt(terms[0] / terms[1].clamp(min=1)) + GRAD_RMS_EPS)).float()

    def _rms_terms(self, items: list[AdamWTensor]) -> Tensor:
        """This rank's [sum of squared gradient entries, number of entries] (float64, on the collectives'
        device): the squares of its per-tensor float32 norms, summed in float64."""
        terms = torch.zeros(2, dtype=torch.float64, device=self.ctx.comm_device)
        if items:
            grads = [it.grad if it.grad.dtype == torch.float32 else it.grad.float() for it in items]
            terms[0] = torch.stack(torch._foreach_norm(grads)).double().pow(2).sum().to(terms.device)
            terms[1] = float(sum(g.numel() for g in grads))
        return terms

    @staticmethod
    def place_state(p, whole: Tensor) -> Tensor:
        """This rank's rows of a whole moment of parameter `p` (read from a checkpoint), on p's device."""
        first, here = row_block(p)
        return whole[first:first + here].to(p.device, p.dtype, copy=True)
