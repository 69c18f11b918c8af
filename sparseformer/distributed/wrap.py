"""Wrapping a model for its mode: DDP replicas, or FSDP2 shards (fully_shard per layer, then the root).

Under DDP every rank holds the whole model; the gradient all-reduce averages over ranks, so every rank
then projects the same weights the same way (SparseAdamW unchanged). Under FSDP2 each parameter becomes a
DTensor sharded along dim 0; ShardedSparseAdamW (optim.py) steps the local rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from .context import DistContext


def layer_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one: the layers of the model's first nn.ModuleList (GPT's blocks)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            return list(module)
    return []


def wrap_model(model: nn.Module, ctx: DistContext, units: Iterable[nn.Module] | None = None) -> nn.Module:
    """The module to run forward and backward through: `model` itself (single process, and FSDP2, which
    shards it in place: each of `units`, default `layer_units(model)`, then the root), or its DDP wrapper.
    Build the optimizer after this call (FSDP2 replaces the parameters)."""
    if ctx.mode == "ddp":
        import inspect

        from torch.nn.parallel import DistributedDataParallel
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # buffers (final_logits_bias) never change in training: no broadcast before every forward
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **no_sync)
    if ctx.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for unit in (layer_units(model) if units is None else units):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def unwrap(wrapped: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the module itself otherwise)."""
    return getattr(wrapped, "module", wrapped) if type(wrapped).__name__ == "DistributedDataParallel" else wrapped


@contextmanager
def gradient_sync(wrapped: nn.Module, ctx: DistContext, sync: bool) -> Iterator[None]:
    """Forward and backward of one micro-batch; `sync` False keeps its gradient local (accumulated), True
    reduces the accumulated gradient over ranks in this backward (the step's last micro-batch)."""
    if ctx.mode == "ddp" and not sync:
        with wrapped.no_sync():
            yield
        return
    if ctx.mode == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    yield
