"""AbsTopK of activations: the rule, its readable reference and the torch backend.

Rule, per row (the last dimension): keep the k entries of largest magnitude with their sign and zero the
rest; among equal magnitudes the lowest column wins, so the result depends on the input only, whatever the
backend. Magnitudes are compared through `keys`: the bit pattern of |x| as an integer of x's own width,
which orders like |x|, makes +0 and -0 equal and puts NaN above inf (as torch.topk does).

A row's selection is stored as two integers (thr, cut): thr is the key of the k-th kept entry (the smallest
kept key) and cut the column of the last tie kept (key == thr), so an entry is kept iff key > thr, or
key == thr and col <= cut; when every tie is kept, cut = C - 1 (the common case, which lets the backward
skip the column test). k = 0 keeps nothing: thr = the largest key value (`key_max`), cut = -1. The masked
backward rebuilds the mask from the output y and (thr, cut) (`mask_from_output`), so the autograd Function
saves no mask of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

_INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def keys(x: Tensor) -> Tensor:
    """|x| as the integer bit pattern of x's width (int16 for 16-bit floats, int32, int64)."""
    if not x.is_floating_point():
        raise TypeError(f"abstopk: want a floating-point tensor, got {x.dtype}")
    ity = _INT_OF[x.element_size()]
    return x.view(ity) & torch.iinfo(ity).max


def key_max(dtype: torch.dtype) -> int:
    """The largest key of a float dtype (all magnitude bits set)."""
    return torch.iinfo(_INT_OF[torch.finfo(dtype).bits // 8]).max


def abstopk_ref(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The rule itself, written for clarity: x [M, C], 0 <= k <= C -> (y [M, C], thr [M], cut [M] int64).

    A stable descending sort of the keys puts the kept entries first, ties in column order."""
    M, C = x.shape
    if not 0 <= k <= C:
        raise ValueError(f"abstopk: k={k} outside [0, {C}]")
    if k == 0:
        full = lambda v: torch.full((M,), v, dtype=torch.int64, device=x.device)   # noqa: E731
        return torch.zeros_like(x, memory_format=torch.contiguous_format), full(key_max(x.dtype)), full(-1)
    order = torch.sort(keys(x), dim=1, descending=True, stable=True)
    kept = order.indices[:, :k]
    keep = torch.zeros(M, C, dtype=torch.bool, device=x.device).scatter_(1, kept, True)
    y = torch.where(keep, x, x.new_zeros(()))
    thr = order.values[:, k - 1]
    every_tie = order.values[:, k] != thr if k < C else torch.ones_like(thr, dtype=torch.bool)
    return y, thr.long(), torch.where(every_tie, C - 1, kept[:, k - 1])


def abstopk_torch(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same result as `abstopk_ref`, faster: torch.topk of the keys; when no row has more ties at its k-th key
    than it keeps (the usual case), its indices are the kept set, else ties are ranked by a running count."""
    M, C = x.shape
    if k == 0 or M == 0:
        return abstopk_ref(x, k)
    key = keys(x)
    top, idx = key.topk(k, dim=1, sorted=False)
    thr = top.amin(1, keepdim=True)                                         # the k-th largest key
    if bool(((key >= thr).sum(1) == k).all()):
        if x.element_size() >= 4:
            y = torch.zeros_like(x, memory_format=torch.contiguous_format).scatter_(1, idx, x.gather(1, idx))
        else:   # scatter of 16-bit floats rewrites NaN payloads on the CPU; where copies the bits
            keep = torch.zeros(M, C, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
            y = torch.where(keep, x, x.new_zeros(()))
        return y, thr.squeeze(1).long(), torch.full((M,), C - 1, dtype=torch.int64, device=x.device)
    gt = key > thr
    tie = key == thr
    rank = tie.cumsum(1)                                                    # 1-based rank among the ties
    need = k - gt.sum(1, keepdim=True)                                      # ties to take, >= 1
    keep = gt | (tie & (rank <= need))
    cols = torch.arange(C, device=x.device)
    cut = torch.where(tie & (rank == need), cols, -1).amax(1)
    cut = torch.where(rank[:, -1] == need.squeeze(1), C - 1, cut)           # every tie kept
    return torch.where(keep, x, x.new_zeros(())), thr.squeeze(1).long(), cut


def mask_from_output(y: Tensor, thr: Tensor, cut: Tensor) -> Tensor:
    """The kept entries of a selection, from its output y [M, C] and (thr, cut).

    Kept entries have y == x, hence the same key; dropped ones have y == 0 (key 0), which is below thr
    unless thr == 0, and then every dropped entry is a tie of column > cut."""
    key = keys(y)
    thr, cut = thr[:, None], cut[:, None]
    cols = torch.arange(y.shape[1], device=y.device)
    return (key > thr) | ((key == thr) & (cols <= cut))


def masked_grad_torch(g: Tensor, y: Tensor, thr: Tensor, cut: Tensor) -> Tensor:
    """dL/dx of AbsTopK: g where the entry was kept, 0 elsewhere (g, y [M, C])."""
    if bool(((thr > 0) & (cut == y.shape[1] - 1)).all()):
        keep = y != 0                  # every kept entry is non-zero and every tie kept: no column test
    else:
        keep = mask_from_output(y, thr, cut)
    return torch.where(keep, g, g.new_zeros(()))
