"""What an AdamW kernel set reads and must do: the per-dtype tables and the `AdamKernels` interface.

One fused pass per dtype reads p, g, m, v and writes p, m, v for every tensor of the group (one program
per `block` elements of one tensor). The AdamPtrs and AdamHyp tables (_schema.py) give each tensor's
addresses and hyperparameters; SLOT links a projected tensor to its row of the projection's Window and
Hist tables, where the pass adds the first histogram of the projection (topk/phases.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AdamGroup:
    """One dtype's tensors of a fused Adam pass."""

    dtype: torch.dtype
    bases: tuple[Tensor, Tensor, Tensor, Tensor]    # lowest-address p, g, m, v: Triton addresses base + offset
    aligned: bool           # every tensor 16-byte aligned relative to its base (vector loads)
    ptrs: Tensor            # int64 [T, AdamPtrs.WIDTH]
    hyp: Tensor             # float32 [T, AdamHyp.WIDTH]
    prog_tid: Tensor        # int32 [P]
    prog_start: Tensor      # int64 [P]


class AdamKernels(ABC):
    """The fused Adam pass of a backend."""

    name: str = ""
    block: int = 4096       # elements per program in the block table

    @abstractmethod
    def adam(self, g: AdamGroup, scale: Tensor, win: Tensor, hist: Tensor) -> None:
        """One Adam update of every tensor of `g` (reference.py's math, gradients times scale[0]), rounded
        to the dtype wherever the reference stores a tensor; decay by AdamHyp.DECAY. A tensor with a SLOT
        >= 0 whose Window row is active also adds its new keys to its Hist row (read-only histogram)."""
