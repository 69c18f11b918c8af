"""Training on many processes with torch.distributed: DDP replicas or FSDP2 shards, launched by torchrun.

Reading order: context.py (which rank this is, the process group, collective failures as one line) ->
batches.py (the rank's micro-batches of the global batch) -> wrap.py (DDP or fully_shard) -> optim.py
(SparseAdamW on FSDP2 shards, the exact top-k across ranks) -> state.py (whole tensors for checkpoints).
sparseformer/train.py drives them; docs/distributed.md explains the design and what is exact.
"""

from .batches import check_batch, micro_batches
from .context import DistContext, PeerLost, init_context, is_collective_failure, planned_world_size
from .optim import ShardedSparseAdamW, make_comm, row_block
from .state import full_state, gather_rows
from .wrap import gradient_sync, layer_units, unwrap, wrap_model

__all__ = ["DistContext", "PeerLost", "ShardedSparseAdamW", "check_batch", "full_state", "gather_rows",
           "gradient_sync", "init_context", "is_collective_failure", "layer_units", "make_comm",
           "micro_batches", "planned_world_size", "row_block", "unwrap", "wrap_model"]
