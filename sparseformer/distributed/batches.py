"""Rank-sliced micro-batches: the global batch of a step, cut into world_size x grad_accum equal pieces.

The global batch of step s is the same function of (seed, s) whatever the number of ranks (the dataset
draws it); rank r trains on rows [r * B/N, (r + 1) * B/N) of it, in grad_accum consecutive micro-batches.
So piece i of the global batch is micro-batch i mod A of rank i div A, and one process with
--grad-accum N*A runs exactly the pieces that N ranks with --grad-accum A run (docs/distributed.md).
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError


def check_batch(batch_size: int, world_size: int, grad_accum: int) -> int:
    """The rows of one micro-batch; ConfigError naming the numbers when the batch does not divide."""
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ConfigError(f"--grad-accum {grad_accum!r} must be a positive integer")
    pieces = world_size * grad_accum
    if batch_size % pieces:
        ranks = f"{world_size} rank{'s' if world_size > 1 else ''}"
        up = -(-batch_size // pieces) * pieces
        raise ConfigError(f"train.batch_size={batch_size} does not divide into {ranks} x --grad-accum {grad_accum} "
                          f"= {pieces} micro-batches; use a batch size that is a multiple of {pieces} (e.g. {up}) "
                          f"or change the number of ranks or --grad-accum")
    return batch_size // pieces


def micro_batches(x: Tensor, y: Tensor, rank: int, world_size: int, grad_accum: int) -> list[tuple[Tensor, Tensor]]:
    """This rank's micro-batches of the global batch (x, y: [B, T]), in order."""
    rows = check_batch(x.shape[0], world_size, grad_accum)
    first = rank * grad_accum
    return [(x[(first + i) * rows:(first + i + 1) * rows], y[(first + i) * rows:(first + i + 1) * rows])
            for i in range(grad_accum)]
