"""How the weight gradient of a sparse linear layer is computed: the dW policy.

"dense" (default): dW = dY^T X in full, the paper's semantics: every weight gets a gradient, so a pruned
weight can re-enter the top-k. "support" (opt-in, CHANGES THE ALGORITHM): dW only on the current support
plus a candidate set (an SDDMM, launch.sdd), zero elsewhere; optionally a dense dW every `dense_every`
backward passes, whose largest off-support entries become the candidates until the next dense one
(RigL / Top-KAST style). A policy belongs to one layer: it counts that layer's backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from .launch import sdd

__all__ = ["DW_MODES", "DwPolicy"]

DW_MODES = ("dense", "support")


@dataclass
class DwPolicy:
    """The dW policy of one layer; see the module docstring."""
    mode: str = "dense"                 # "dense" | "support"
    dense_every: int = 0                # support mode: dense dW every N backward passes (0 = never)
    candidates: float = 0.0             # support mode: extra entries, as a multiple of nnz, from the last dense dW
    calls: int = 0
    cand_flat: Tensor | None = field(default=None, repr=False)   # flat indices of the candidates

    def __post_init__(self):
        if self.mode not in DW_MODES:
            raise ValueError(f"dw_mode={self.mode!r} is unknown; choose one of {DW_MODES}")
        if self.dense_every < 0 or self.candidates < 0:
            raise ValueError(f"dense_every={self.dense_every} and candidates={self.candidates} must be >= 0")

    def grad(self, dy: Tensor, x: Tensor, w: Tensor, sw: SparseWeight, backend: str) -> Tensor:
        """dW for one backward pass (dy [M, N], x [M, K]), in w's dtype."""
        dense_now = self.mode == "dense" or (self.dense_every > 0 and self.calls % self.dense_every == 0)
        self.calls += 1
        if dense_now:
            g = (dy.t() @ x.to(dy.dtype)).to(w.dtype)
            if self.mode == "support" and self.candidates > 0:
                self._pick_candidates(g, sw)
            return g
        flat = sw.flat_index()
        if self.cand_flat is not None and self.cand_flat.device == flat.device:
            flat = torch.unique(torch.cat([flat, self.cand_flat]))
        n, k = sw.shape
        rows, cols = flat // k, flat % k
        g = torch.zeros(n * k, dtype=w.dtype, device=w.device)
        g[flat] = sdd(dy, x, rows, cols, backend=backend).to(w.dtype)
        return g.view(n, k)

    @torch.no_grad()
    def _pick_candidates(self, g: Tensor, sw: SparseWeight) -> None:
        score = g.abs().float().reshape(-1)
        score[sw.flat_index()] = -1.0
        c = min(int(self.candidates * max(sw.nnz, 1)), score.numel() - sw.nnz)
        self.cand_flat = score.topk(c, sorted=False).indices if c > 0 else None
