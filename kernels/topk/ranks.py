"""What a projection across ranks exchanges besides its histograms: column protection and tie shares.

Each rank holds a block of whole rows [offset, offset + rows_here) of every tensor (FSDP2 shards dim 0 in
contiguous blocks). The kernels see only local positions; the functions here turn local facts into the
small payloads ranks gather, and gathered payloads into what this rank must do, so that the kept set is
the one a single process keeps on the whole tensor. Every payload is a flat int64 tensor of the same
length on every rank, so a plain all-gather carries it. docs/kernels.md gives the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LOW32 = (1 << 32) - 1


@dataclass(frozen=True)
class Shard:
    """Where a rank's view sits in the whole tensor, which is sharded along its first dimension.

    `transposed`: the view is the .t() of the rank's row block (column protection), so the view's columns
    run along the sharded dimension; the whole tensor's flat order is then the order of the transposed
    whole tensor, which interleaves the ranks.
    """

    offset: int             # first row of the whole tensor that this rank holds
    rows: int               # rows of the whole tensor (its size along the sharded dimension)
    numel: int              # entries of the whole tensor
    transposed: bool = False


def column_protect_payload(view: Tensor, j: int, shard: Shard) -> Tensor:
    """This rank's candidates for the protected top-j of each row of a transposed view, int64 [C * j']
    with j' = min(j, shard.rows): the j' largest `key << 32 | (2**32 - 1 - row)` per view row, where row is
    the whole tensor's row (so a larger packed value means a larger key, then a lower row); -1 pads a rank
    that holds fewer than j' entries of the row."""
    C, here = view.shape
    jj = min(int(j), shard.rows)
    out = torch.full((C, jj), -1, dtype=torch.long, device=view.device)
    if C and here and jj:
        key = view.detach().abs().float().contiguous().view(torch.int32).long()
        row = shard.offset + torch.arange(here, device=view.device)
        top = torch.topk((key << 32) | (LOW32 - row), min(jj, here), dim=1).values
        out[:, :top.shape[1]] = top
    return out.reshape(-1)


def merge_column_protect(gathered: Tensor, C: int, j: int, shard: Shard) -> tuple[Tensor, Tensor]:
    """From every rank's `column_protect_payload` ([world, C * j']): per view row, the protection threshold
    key and the last protected view column among the ties at it, in this rank's local columns (tables.py
    reads them like `protection.row_protect_keys`)."""
    jj = min(int(j), shard.rows)
    if jj == 0 or C == 0:
        inf_key = torch.full((C,), 0x7F800000, dtype=torch.long, device=gathered.device)
        return inf_key, torch.full((C,), -1, dtype=torch.long, device=gathered.device)
    world = gathered.shape[0]
    packed = gathered.reshape(world, C, jj).permute(1, 0, 2).reshape(C, world * jj)
    jth = torch.topk(packed, jj, dim=1).values[:, -1]             # the j'-th largest over every rank
    return jth >> 32, LOW32 - (jth & LOW32) - shard.offset


def tie_payload(shard: Shard, ties_per_view_row: Tensor) -> Tensor:
    """What a rank tells the others about its ties at the threshold of one tensor, int64: its offset, then
    its tie count (whole rows: the flat order is the rank order) or its count per view row (transposed)."""
    counts = ties_per_view_row.sum().reshape(1) if not shard.transposed else ties_per_view_row
    return torch.cat([torch.tensor([shard.offset], device=counts.device), counts.long()])


def tie_quota(gathered: Tensor, rank: int, need: int, shard: Shard) -> int:
    """How many of this rank's ties (in its local flat order) survive, from every rank's `tie_payload`
    ([world, 1 + L]) and the number of ties the whole tensor keeps. Ties go to the lowest flat index of the
    whole tensor: ranks follow their offsets, and a transposed view orders by view row first."""
    g = gathered.cpu().long()
    order = sorted(range(g.shape[0]), key=lambda r: (int(g[r, 0]), r))
    before = order[:order.index(rank)]
    counts = g[:, 1:]
    mine = counts[rank]
    if not shard.transposed:
        prefix = int(counts[before].sum()) if before else 0
        return max(0, min(need - prefix, int(mine[0])))
    total = counts.sum(0)
    cum = torch.cumsum(total, 0)
    c = int(torch.searchsorted(cum, torch.tensor(need)))           # the view row where the need is met
    taken = int(cum[c] - total[c])                                # ties in earlier view rows, all ranks
    prefix = int(counts[before, c].sum()) if before else 0
    return int(mine[:c].sum()) + max(0, min(need - taken - prefix, int(mine[c])))
