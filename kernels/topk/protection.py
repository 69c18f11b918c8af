"""Per-row protection thresholds: what lets a kernel tell a protected entry from its row alone.

An entry (r, c) of a view protected per row with j is protected when its key (the float32 bits of |w|)
is above its row's j-th largest key `thr[r]`, or equal to it with c <= `cut[r]`, the last column among
the ties at thr[r] that still fits in the row's j (ties go to the lowest column; reference.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def row_protect(w2d: Tensor, j: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each row of the 2-D `w2d`: its j-th largest |w| (float32), the last protected column among the
    entries equal to it, and the bool mask of protected entries (each row's top-j, ties to the lowest column)."""
    a = w2d.detach().abs().float()
    rows, cols = a.shape
    j = max(0, min(int(j), cols))
    if j == 0 or rows == 0:
        z = torch.zeros(rows, device=a.device)
        return z.fill_(float("inf")), torch.full((rows,), -1, dtype=torch.long, device=a.device), \
            torch.zeros_like(a, dtype=torch.bool)
    thr = torch.topk(a, j, dim=1, sorted=False).values.amin(1)
    gt = a > thr[:, None]
    budget = j - gt.sum(1)                                  # >= 1: ties at thr still protected
    eq = a == thr[:, None]
    rank = eq.cumsum(1)
    last = eq & (rank == budget[:, None])
    colcut = last.to(torch.uint8).argmax(1)
    prot = gt | (eq & (rank <= budget[:, None]))
    return thr, colcut, prot


def row_protect_keys(w2d: Tensor, j: int) -> tuple[Tensor, Tensor]:
    """`row_protect`'s threshold as an int64 key (float32 bits) and its cut, as the kernels read them."""
    thr, cut, _ = row_protect(w2d, j)
    return thr.view(torch.int32).long(), cut
