"""How the weight gradient of a sparse linear layer is computed: the dW policy of one layer.

"dense" (default): dW = dY^T X in full, the paper's semantics: every weight gets a gradient, so a pruned
weight can re-enter the top-k at any step.

"support" (opt-in, CHANGES THE ALGORITHM; docs/support-dw.md): dW only at the *computed* entries, zero
elsewhere (an SDDMM, launch.sdd), except on refresh steps, where dW is dense. The computed entries are the
current support plus the *tracked* set:
- at a refresh, the `candidates` x nnz off-support entries with the largest |gradient| of the step's whole
  gradient (every micro-batch, all-reduced across ranks), plus the support of that step;
- after each step, every entry that was on the support during it (so a weight that drops out keeps its
  gradient and can come back, as under dense dW).
The counter is in optimizer steps, not backward passes: step s (0-based) is a refresh when `dense_every`
> 0 and s % dense_every == 0, and every backward pass of that step (each micro-batch) is dense. The owner
of the optimizer loop sets `step` before a step's backward passes (`begin_step`); `end_step` runs once
per optimizer step, after the step's gradient is final and before the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from ..topk import topk_mask
from .launch import sdd

__all__ = ["DW_MODES", "DwPolicy"]

DW_MODES = ("dense", "support")


@dataclass
class DwPolicy:
    """The dW policy of one layer; see the module docstring."""
    mode: str = "dense"                 # "dense" | "support"
    dense_every: int = 0                # support: refresh (dense dW) every N optimizer steps (0: never, and
                                        # the tracked set then keeps every entry ever on the support)
    candidates: float = 0.0             # support: off-support entries tracked from a refresh, as a multiple of nnz
    step: int = 0                       # optimizer steps done: the refresh counter
    tracked: Tensor | None = field(default=None, repr=False)    # flat indices computed besides the support
    computed: Tensor | None = field(default=None, repr=False)   # the last backward's entries (None: dense)

    def __post_init__(self):
        if self.mode not in DW_MODES:
            raise ValueError(f"dw_mode={self.mode!r} is unknown; choose one of {DW_MODES}")
        if self.dense_every < 0 or self.candidates < 0:
            raise ValueError(f"dense_every={self.dense_every} and candidates={self.candidates} must be >= 0")

    @property
    def support_mode(self) -> bool:
        return self.mode == "support"

    def refresh(self) -> bool:
        """Whether the current step's dW is dense."""
        return not self.support_mode or (self.dense_every > 0 and self.step % self.dense_every == 0)

    def computed_index(self, support: Tensor, numel: int) -> Tensor:
        """Sorted flat indices a support step computes: `support` (int64 flat indices) and the tracked set."""
        return support if self.tracked is None else _union(numel, support, self.tracked)

    def grad(self, dy: Tensor, x: Tensor, w: Tensor, sw: SparseWeight | None, backend: str) -> Tensor:
        """dW for one backward pass (dy [M, N], x [M, K]), in w's dtype; `sw` (w's format, when the forward
        built one) saves finding the support again."""
        if self.refresh():
            self.computed = None
            return (dy.t() @ x.to(dy.dtype)).to(w.dtype)
        support = sw.flat_index() if sw is not None else w.detach().reshape(-1).nonzero().view(-1)
        flat = self.computed_index(support, w.numel())
        self.computed = flat
        n, k = w.shape
        g = torch.zeros(n * k, dtype=w.dtype, device=w.device)
        g[flat] = sdd(dy, x, flat // k, flat % k, backend=backend).to(w.dtype)
        return g.view(n, k)

    @torch.no_grad()
    def end_step(self, grad: Tensor | None, weight: Tensor) -> None:
        """Once per optimizer step, before the update: `grad` is the step's whole gradient (None if the layer
        got none) and `weight` the weight the step's forward passes used. Updates the tracked set and
        advances the counter."""
        if self.support_mode:
            support = weight.detach().reshape(-1).nonzero().view(-1)
            if self.refresh() and grad is not None:
                self.tracked = _union(weight.numel(), support, self._candidates(grad, support))
            elif self.tracked is not None:
                self.tracked = _union(weight.numel(), self.tracked, support)
            else:
                self.tracked = support
        self.step += 1

    def _candidates(self, grad: Tensor, support: Tensor) -> Tensor:
        """The `candidates` x nnz off-support entries of largest |grad|, exactly (ties to the lowest flat
        index, so every rank picks the same set from the same gradient)."""
        keep = torch.ones(grad.numel(), dtype=torch.bool, device=grad.device)
        keep[support] = False
        off = keep.nonzero().view(-1)
        c = min(int(self.candidates * max(support.numel(), 1)), off.numel())
        if c <= 0:
            return support[:0]
        score = grad.detach().reshape(-1)[off].float()
        return off[topk_mask(score, c)]


def _union(numel: int, *indices: Tensor) -> Tensor:
    """Sorted union of flat index sets over a tensor of `numel` entries (a mask: cheaper than sorting)."""
    mask = torch.zeros(numel, dtype=torch.bool, device=indices[0].device)
    for idx in indices:
        mask[idx.to(mask.device)] = True
    return mask.nonzero().view(-1)
