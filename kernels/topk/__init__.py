"""The top-k family: exact batched top-k magnitude projection.

Reading order: reference.py (the contract and its readable reference) -> protection.py (per-row
protection thresholds) -> tables.py (the tables and the `TopkKernels` interface a backend implements) ->
torch_kernels.py / triton_kernels.py / cuda_kernels.py (the kernel sets; backends.py maps backend names
to them) -> search.py (one tensor's threshold search) and ranks.py (what ranks exchange) -> phases.py (the
launcher: the projection as explicit phases) -> this file and sharded.py (the public ops; dispatch.py
picks the backend). fast.py is the torch backend's single-process path. docs/kernels.md explains it all.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..dispatch import resolve
from .backends import kernel_set
from .fast import project_topk_torch_, topk_mask_torch
from .phases import PreHist, Projection, Target, TopkState, run
from .ranks import Shard
from .reference import per_tensor, project_topk_ref_, protect_view, topk_mask_ref
from .sharded import Comm, CommStats, project_topk_sharded_, topk_masks_sharded
from .tables import TopkKernels

__all__ = ["Comm", "CommStats", "PreHist", "Projection", "Shard", "Target", "TopkKernels", "TopkState", "kernel_set",
           "project_", "project_topk_", "project_topk_ref_", "project_topk_sharded_", "protect_view", "topk_mask",
           "topk_mask_ref", "topk_masks_sharded"]


def project_(targets: Sequence[Target], backend: str, *, state: TopkState | None = None, mask_mode: bool = False,
             prehist: PreHist | None = None) -> list[Tensor] | None:
    """Run one projection of `targets` through the phases with `backend`'s kernel set (one process)."""
    return run(Projection(targets, kernel_set(backend), state=state, mask_mode=mask_mode, prehist=prehist))


def topk_mask(w: Tensor, k: int, *, protect_per_row: int | None = None, backend: str | None = None) -> Tensor:
    """Bool mask of the exact top-k |w| of `w` (ties to the lowest flat index); see reference.py."""
    chosen = resolve("topk_mask", w.device, backend)
    if chosen == "torch":
        return topk_mask_torch(w, k, protect_per_row)
    return project_([Target(w, k, protect_per_row)], chosen, mask_mode=True)[0]


def project_topk_(tensors: Sequence[Tensor], ks: Sequence[int], *, protect_per_row=None, names=None,
                  backend: str | None = None, state: TopkState | None = None) -> None:
    """In place: keep exactly ks[i] largest-|w| entries of tensors[i], zero the rest.

    `protect_per_row`: None, an int, or one int|None per tensor (2-D tensors only; see reference.py).
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
    protect = per_tensor(protect_per_row, len(tensors))
    labels = list(names) if names is not None else [f"tensors[{i}]" for i in range(len(tensors))]
    chosen = resolve("project_topk_", tensors[0].device, backend)
    if chosen == "torch":
        project_topk_torch_(tensors, ks, protect, labels)
    else:
        project_([Target(w, int(k), j, name) for w, k, j, name in zip(tensors, ks, protect, labels)], chosen,
                 state=state)
