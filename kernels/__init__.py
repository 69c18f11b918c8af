"""sparseformer.kernels: the fast ops and their pure-torch references.

Public API (stable): `topk_mask`, `project_topk_`, `available`. Each op takes `backend=None|"torch"|
"triton"|"cuda"`; see dispatch.py for how None resolves. This package imports nothing from the rest of
sparseformer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .dispatch import available, resolve
from .topk import project_topk_ref_, topk_mask_ref

__all__ = ["available", "project_topk_", "topk_mask"]


def topk_mask(w: Tensor, k: int, *, protect_per_row: int | None = None, backend: str | None = None) -> Tensor:
    """Bool mask of the exact top-k |w| of `w` (ties to the lowest flat index); see topk.py for the rules."""
    resolve("topk_mask", w.device, backend)
    return topk_mask_ref(w, k, protect_per_row)


def project_topk_(tensors: Sequence[Tensor], ks: Sequence[int], *, protect_per_row=None, names=None,
                  backend: str | None = None) -> None:
    """In place: keep exactly ks[i] largest-|w| entries of tensors[i], zero the rest.

    `protect_per_row`: None, an int, or one int|None per tensor (2-D tensors only; see topk.py).
    `names`: optional tensor names used in error messages.
    """
    if len(tensors) != len(ks):
        raise ValueError(f"project_topk_: {len(tensors)} tensors but {len(ks)} ks")
    if not tensors:
        return
    resolve("project_topk_", tensors[0].device, backend)
    project_topk_ref_(tensors, ks, protect_per_row, names)
