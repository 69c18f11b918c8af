"""The "torch" backend's single-process path: pure torch, exact, faster than sorting; the CPU default.

It returns exactly what `reference.topk_mask_ref` returns but finds the threshold without a full sort: a
strided sample of |w| gives a lower bound `lo` for the k-th largest value, and `kthvalue` runs only on the
entries >= lo (about k of them). Ties at the threshold go to the lowest flat index through `nonzero`, which
lists indices in ascending order. It runs on any device. Runs that need the phases (a reduce across ranks)
use torch_kernels.py instead, which computes the same set by the histogram passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .protection import row_protect
from .reference import DTYPES, check, per_tensor

_SAMPLE = 4096          # sample size for the threshold estimate
_SMALL = 1 << 15        # below this, kthvalue on everything is cheapest


def check_fast(w: Tensor, name: str, protect: int | None) -> None:
    """reference.check with a one-pass finiteness test (aminmax propagates NaN and shows inf)."""
    if w.numel() == 0 or w.dtype not in DTYPES:
        check(w, name, protect)
        return
    lo, hi = torch.aminmax(w.detach())
    if not math.isfinite(float(hi.float() - lo.float())):      # inf - inf and NaN are not finite either
        check(w, name, protect)                # raises with the reference's message
    if protect is not None and protect > 0 and w.ndim != 2:
        check(w, name, protect)


def magnitudes(w: Tensor) -> Tensor:
    """|w| as float32 in logical (row-major) order, 1-D; float64 is rounded as in the reference."""
    return w.detach().abs().float().reshape(-1)


def _threshold(a: Tensor, k: int) -> tuple[Tensor, int]:
    """(tau, extra): tau is the k-th largest value of the 1-D float tensor `a` (1 <= k < numel) and `extra`
    the number of entries >= tau beyond k (ties at tau that must go, the last ones by index)."""
    n = a.numel()
    if n > _SMALL:
        step = n // _SAMPLE
        sample = a[::step]
        m = sample.numel()
        r = k * m / n                                   # expected rank from the top inside the sample
        margin = 4.0 * math.sqrt(r + 1.0) + 4.0
        pos = int(math.floor(m - r - margin))
        if pos > 0:                                     # else the window would be (nearly) everything
            lo = torch.kthvalue(sample, pos + 1).values  # the sample's (pos+1)-th smallest
            cand = a[a >= lo]
            c = cand.numel()
            if c >= k:                                  # lo is a true lower bound of the k-th largest
                tau = torch.kthvalue(cand, c - k + 1).values
                return tau, int((cand >= tau).sum()) - k
    tau = torch.kthvalue(a, n - k + 1).values
    return tau, int((a >= tau).sum()) - k


def select_mask(a: Tensor, k: int) -> Tensor:
    """Bool mask of the exact top-k of the 1-D float tensor `a`, ties to the lowest index.

    Entries set to -1 are never chosen as long as k <= the number of entries >= 0.
    """
    n = a.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=a.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=a.device)
    tau, extra = _threshold(a, k)
    keep = a >= tau
    if extra > 0:                                       # more ties at tau than the budget: drop the last ones
        ties = (a == tau).nonzero().squeeze(1)
        keep[ties[ties.numel() - extra:]] = False
    return keep


def _project_one_(w: Tensor, k: int) -> None:
    """Zero, in place, every entry of `w` outside its top-k (no protection): the CPU hot path."""
    n = w.numel()
    if k >= n:
        return
    if k <= 0:
        w.zero_()
        return
    a = magnitudes(w)
    tau, extra = _threshold(a, k)
    w.masked_fill_((a < tau).view(w.shape), 0)
    if extra > 0:                                       # ties beyond the budget: zero the last ones
        ties = (a == tau).nonzero().squeeze(1)
        drop = torch.zeros(n, dtype=torch.bool, device=w.device)
        drop[ties[ties.numel() - extra:]] = True
        w.masked_fill_(drop.view(w.shape), 0)


def topk_mask_torch(w: Tensor, k: int, protect_per_row: int | None = None, name: str = "tensor") -> Tensor:
    """Bool mask (shape of `w`) of the exact top-k survivors; equals `topk_mask_ref`."""
    check_fast(w, name, protect_per_row)
    return topk_mask_torch_unchecked(w, k, protect_per_row)


def project_topk_torch_(tensors: Sequence[Tensor], ks: Sequence[int], protect_per_row=None,
                        names=None) -> None:
    """In place: zero every entry of each tensor outside its top-k (all tensors checked first)."""
    protect = per_tensor(protect_per_row, len(tensors))
    labels = [names[i] if names is not None else f"tensors[{i}]" for i in range(len(tensors))]
    for w, j, name in zip(tensors, protect, labels):
        check_fast(w, name, j)
    for w, k, j in zip(tensors, ks, protect):
        if not j:
            _project_one_(w, int(k))
            continue
        keep = topk_mask_torch_unchecked(w, k, j)
        w.masked_fill_(~keep, 0)


def topk_mask_torch_unchecked(w: Tensor, k: int, protect_per_row: int | None) -> Tensor:
    """`topk_mask_torch` without the dtype/finiteness checks (the caller made them)."""
    n = w.numel()
    k = max(0, min(int(k), n))
    a = magnitudes(w)
    if not protect_per_row:
        return select_mask(a, k).view(w.shape)
    prot = row_protect(w, protect_per_row)[2].reshape(-1)
    n_prot = int(prot.sum())
    if n_prot >= k:
        return select_mask(torch.where(prot, a, -1.0), k).view(w.shape)
    return (select_mask(torch.where(prot, -1.0, a), k - n_prot) | prot).view(w.shape)
