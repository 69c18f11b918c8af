"""sparseformer.kernels: the fast ops and their pure-torch references.

Public API (stable): `topk_mask`, `project_topk_`, `TopkState`, `sparse_adamw_step_`, `available`, and the
sparse matmuls `sparse_linear`, `plan_linear`, `dds`, `sdd`, `DwPolicy`, `LinearPlan`, `SparseWeight`,
`compact` (see spmm/ and sparse_format.py). Each op
takes `backend=None|"torch"|"triton"|"cuda"`; see dispatch.py for how None resolves. This package imports
nothing from the rest of sparseformer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .adamw import sparse_adamw_step_
from .sparse_format import SparseWeight, compact
from .spmm import DwPolicy, LinearPlan, dds, plan_linear, sdd, sparse_linear
from .dispatch import available, kernel_set, resolve
from .topk import _per_tensor, project_topk_ref_, topk_mask_ref  # noqa: F401  (the readable spec)
from .topk_device import TopkState, project_device_
from .topk_torch import project_topk_torch_, topk_mask_torch

__all__ = ["DwPolicy", "LinearPlan", "SparseWeight", "TopkState", "available", "compact", "dds", "plan_linear",
           "project_topk_", "sdd", "sparse_adamw_step_", "sparse_linear", "topk_mask"]


def topk_mask(w: Tensor, k: int, *, protect_per_row: int | None = None, backend: str | None = None) -> Tensor:
    """Bool mask of the exact top-k |w| of `w` (ties to the lowest flat index); see topk.py for the rules."""
    chosen = resolve("topk_mask", w.device, backend)
    if chosen == "torch":
        return topk_mask_torch(w, k, protect_per_row)
    masks: list = []
    project_device_([w], [k], [protect_per_row], ["tensor"], kernel_set(chosen), masks=masks)
    return masks[0]


def project_topk_(tensors: Sequence[Tensor], ks: Sequence[int], *, protect_per_row=None, names=None,
                  backend: str | None = None, state: TopkState | None = None) -> None:
    """In place: keep exactly ks[i] largest-|w| entries of tensors[i], zero the rest.

    `protect_per_row`: None, an int, or one int|None per tensor (2-D tensors only; see topk.py).
    `names`: optional tensor names used in error messages.
    `state`: a TopkState reused across calls on the same tensors warm-starts the device backends from the
    previous thresholds (the torch backend ignores it). Every tensor is checked (dtype, NaN/inf) before
    any is changed; the device backends run each pass as one launch per dtype for all tensors.
    """
    tensors = list(tensors)
    if len(tensors) != len(ks):
        raise ValueError(f"project_topk_: {len(tensors)} tensors but {len(ks)} ks")
    if not tensors:
        return
    protect = _per_tensor(protect_per_row, len(tensors))
    labels = list(names) if names is not None else [f"tensors[{i}]" for i in range(len(tensors))]
    chosen = resolve("project_topk_", tensors[0].device, backend)
    if chosen == "torch":
        project_topk_torch_(tensors, ks, protect, labels)
    else:
        project_device_(tensors, ks, protect, labels, kernel_set(chosen), state=state)
