"""Exact per-tensor top-k magnitude selection and in-place projection: the contract and its reference.

Semantics (every backend must match `topk_mask_ref` exactly):
- k is clipped to [0, numel]; exactly k entries survive.
- The survivors are the k largest |w|. +0 and -0 are equal. Ties go to the lowest flat index of the tensor
  *as passed* (its logical row-major order, also for non-contiguous views).
- Optional protection (`protect_per_row=j`, 2-D tensors): every row w[r, :] first marks its j largest |w|
  (ties to the lowest column) as protected. Survivors are then chosen by the key (protected, |w|),
  largest first, ties to the lowest flat index. So protected entries always survive when there are at most k
  of them; when there are more, the k largest protected ones survive. To protect columns, pass `w.t()`
  (`protect_view` builds that view from a (j, "rows" | "cols") rule).
- NaN or inf anywhere raises ValueError naming the tensor.
Accepted dtypes: float32, float16, bfloat16, float64 (float64 is compared after rounding to float32).
docs/kernels.md explains how the fast backends find the same set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def protect_view(w: Tensor, protect) -> tuple[Tensor, int | None]:
    """The view of `w` whose rows carry a protection rule, and j (None when unprotected).

    `protect` is None or (j, "rows" | "cols"): protect each row's (or column's) top-j |w|. The projection
    of the returned view with `protect_per_row=j` is the projection of `w` under the rule.
    """
    if not protect:
        return w, None
    j, axis = protect
    if axis == "rows":
        return w, int(j)
    if axis == "cols":
        return w.t(), int(j)
    raise ValueError(f"protect axis must be 'rows' or 'cols', got {axis!r}")


def per_tensor(value, n: int) -> list:
    """`value` (None, an int, or one entry per tensor) as a list of n entries."""
    if value is None or isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"top-k projection: got {len(value)} protect_per_row entries for {n} tensors")
    return value


def check_dtype_shape(w: Tensor, name: str, protect: int | None) -> None:
    """Raise ValueError for a dtype outside DTYPES, or protection asked of a tensor that is not 2-D."""
    if w.dtype not in DTYPES:
        raise ValueError(f"top-k projection: tensor {name!r} has dtype {w.dtype}; want one of {DTYPES}")
    if protect is not None and protect > 0 and w.ndim != 2:
        raise ValueError(f"top-k projection: protect_per_row needs a 2-D tensor, {name!r} is {tuple(w.shape)}")


def check_finite(w: Tensor, name: str) -> None:
    """Raise ValueError when `w` holds NaN or inf."""
    if not bool(torch.isfinite(w).all()):
        bad = "NaN" if bool(torch.isnan(w).any()) else "inf"
        raise ValueError(f"top-k projection: tensor {name!r} {tuple(w.shape)} contains {bad}")


def check(w: Tensor, name: str, protect: int | None) -> None:
    """Every check of the contract: dtype, protection shape, finiteness."""
    check_dtype_shape(w, name, protect)
    check_finite(w, name)


def protected_mask_ref(w: Tensor, j: int) -> Tensor:
    """Bool mask of each row's j largest |w| (ties to the lowest column)."""
    rows, cols = w.shape
    j = max(0, min(int(j), cols))
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    if j == 0 or rows == 0:
        return mask
    order = torch.sort(w.abs().float(), dim=1, descending=True, stable=True).indices[:, :j]
    mask.scatter_(1, order, True)
    return mask


def topk_mask_ref(w: Tensor, k: int, protect_per_row: int | None = None, name: str = "tensor") -> Tensor:
    """Bool mask (shape of `w`) of the exact top-k survivors; the readable reference."""
    check(w, name, protect_per_row)
    n = w.numel()
    k = max(0, min(int(k), n))
    flat = w.abs().float().reshape(-1)  # reshape follows logical order for views
    order = torch.sort(flat, descending=True, stable=True).indices
    if protect_per_row:
        prot = protected_mask_ref(w, protect_per_row).reshape(-1)[order]
        # a stable sort on "protected" keeps the |w| order (and its tie order) inside each group
        order = order[torch.sort(prot.to(torch.uint8), descending=True, stable=True).indices]
    mask = torch.zeros(n, dtype=torch.bool, device=w.device)
    mask[order[:k]] = True
    return mask.view(w.shape)


def project_topk_ref_(tensors: Sequence[Tensor], ks: Sequence[int], protect_per_row=None, names=None) -> None:
    """Zero, in place, every entry of each tensor outside its top-k."""
    protect = per_tensor(protect_per_row, len(tensors))
    for i, (w, k) in enumerate(zip(tensors, ks)):
        name = names[i] if names is not None else f"tensors[{i}]"
        keep = topk_mask_ref(w, k, protect[i], name)
        w.masked_fill_(~keep, 0)
