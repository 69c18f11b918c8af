"""AbsTopK of activations: the rule, its readable reference and the torch backend.

Rule, per row (the last dimension): keep the k entries of largest magnitude with their sign and zero the
rest; among equal magnitudes the lowest column wins, so the result depends on the input only, whatever the
backend. Magnitudes are compared through `keys`: the bit pattern of |x| as an integer of x's own width,
which orders like |x|, makes +0 and -0 equal and puts NaN above inf (as torch.topk does).

A row's selection is stored as two integers (thr, cut): thr is the key of the k-th kept entry (the smallest
kept key) and cut the column of the last tie kept (key == thr), so an entry is kept iff key > thr, or
key == thr and col <= cut; when every tie is kept, cut = C - 1. k = 0 keeps nothing: thr = the largest key
value (`key_max`), cut = -1. The Triton backward rebuilds the mask from the output y and (thr, cut)
(`mask_from_output`), so it saves no mask; the torch backend keeps torch.topk's k indices per row instead.
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
    return _sorted_select(x, k)[:3]


def _sorted_select(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    M, C = x.shape
    if not 0 <= k <= C:
        raise ValueError(f"abstopk: k={k} outside [0, {C}]")
    if k == 0:
        full = lambda v: torch.full((M,), v, dtype=torch.int64, device=x.device)   # noqa: E731
        return (torch.zeros_like(x, memory_format=torch.contiguous_format), full(key_max(x.dtype)), full(-1),
                torch.zeros(M, 0, dtype=torch.int64, device=x.device))
    order = torch.sort(keys(x), dim=1, descending=True, stable=True)
    kept = order.indices[:, :k]
    thr = order.values[:, k - 1]
    every_tie = order.values[:, k] != thr if k < C else torch.ones_like(thr, dtype=torch.bool)
    return _take(x, kept), thr.long(), torch.where(every_tie, C - 1, kept[:, k - 1]), kept


def select_torch(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`abstopk_ref`'s (y, thr, cut) and the kept columns idx [M, k], by torch.topk of integer keys: the plain
    keys for rows with more than k non-zeros (redone with composite keys key * C + (C - 1 - col), which order
    like the rule, where ties at the k-th key are left out), and for rows with at most k non-zeros (common
    after very sparse weights) composite keys (non-zero, C - 1 - col): every non-zero, then the lowest zeros.
    float64 keys do not fit in a composite: sorted instead."""
    M, C = x.shape
    if k == 0 or M == 0 or k == C or x.element_size() == 8:
        return _sorted_select(x, k)
    key = keys(x)
    n_nz = torch.count_nonzero(key, dim=1)
    # every row is filled below; zeros, not empty: the determinism audit compares every op's output bytes
    idx = torch.zeros(M, k, dtype=torch.int64, device=x.device)
    cut = torch.full((M,), C - 1, dtype=torch.int64, device=x.device)   # every tie kept, unless set below
    rev = torch.arange(C - 1, -1, -1, device=x.device)
    rev32 = rev.to(torch.int32)
    few = n_nz <= k
    for rows, many in ((_rows(few), False), (_rows(~few), True)):
        if rows is None:
            continue
        sub = key[rows]
        if not many:
            top, idx[rows] = torch.where(sub > 0, rev32 + C, rev32).topk(k, dim=1, sorted=False)
            cut[rows] = torch.where(n_nz[rows] < k, C - 1 - top.amin(1).long() % C, C - 1)
            continue
        top, idx[rows] = sub.topk(k, dim=1, sorted=False)
        thr = top.amin(1)
        tied = _rows((sub >= thr[:, None]).sum(1) > k)                 # ties at the k-th key left out
        if tied is not None:
            ctop, cidx = (sub[tied].long() * C + rev).topk(k, dim=1, sorted=False)
            sel = rows[tied] if isinstance(rows, Tensor) else tied
            idx[sel] = cidx
            cut[sel] = C - 1 - ctop.amin(1) % C
    return _take(x, idx), key.gather(1, idx).amin(1).long(), cut, idx


def _rows(mask: Tensor):
    """All rows (a full slice) when mask is all True, None when it is all False, else the row indices."""
    if bool(mask.all()):
        return slice(None)
    return mask.nonzero().squeeze(1) if bool(mask.any()) else None


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """x at the columns idx [M, k] of each row, zeros elsewhere; a contiguous copy of x's bits."""
    if x.element_size() >= 4:
        return torch.zeros_like(x, memory_format=torch.contiguous_format).scatter_(1, idx, x.gather(1, idx))
    # scatter of 16-bit floats rewrites NaN payloads on the CPU; where copies the bits
    keep = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
    return torch.where(keep, x, x.new_zeros(()))


def masked_grad_torch(g: Tensor, idx: Tensor) -> Tensor:
    """dL/dx of AbsTopK on the torch backend: g at the kept columns idx [M, k] of each row, 0 elsewhere."""
    return torch.zeros_like(g, memory_format=torch.contiguous_format).scatter_(1, idx, g.gather(1, idx))


def mask_from_output(y: Tensor, thr: Tensor, cut: Tensor) -> Tensor:
    """The kept entries of a selection, from its output y [M, C] and (thr, cut).

    Kept entries have y == x, hence the same key; dropped ones have y == 0 (key 0), which is below thr
    unless thr == 0, and then every dropped entry is a tie of column > cut."""
    key = keys(y)
    thr, cut = thr[:, None], cut[:, None]
    cols = torch.arange(y.shape[1], device=y.device)
    return (key > thr) | ((key == thr) & (cols <= cut))
