"""Support-only weight gradients across a model (docs/support-dw.md): the per-step counter and the end of
a step, for SparseAdamW or any other optimizer.

A sparse layer with dw_mode="support" (kernels.spmm.DwPolicy) computes its weight gradient only on its
support plus a tracked set, and a dense one on refresh steps. Two things happen once per optimizer step:
- before its backward passes, the loop says which step it is (`begin_step(model, step)`): every
  micro-batch of a refresh step then gets the dense dW;
- after the step's gradient is final (all micro-batches accumulated, all-reduced under DDP) and before
  the update, each policy updates its tracked set from that gradient (`end_step`). This runs in an
  optimizer step pre-hook installed by the first support layer, so it happens exactly once per
  `optimizer.step()` under any optimizer and needs no call in the loop. A gradient sharded by FSDP2 (a
  DTensor) is gathered whole, on refresh steps only, so every rank tracks the same entries.
Flat indices are over the [out, in] view of the weight (`weight_out_in`), whatever its stored layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .owner import owner_of

__all__ = ["begin_step", "install_step_hook", "out_in_grad", "stored_index", "support_layers"]

_HOOK = None        # the handle of the process-wide optimizer step pre-hook


def support_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} of every layer of `model` whose dW policy is "support" (SparseProduct layers: this
    module sits below linear.py, which installs its hook, so it reads the policy by attribute)."""
    return {name: m for name, m in model.named_modules() if _support_policy(m) is not None}


def _support_policy(layer: nn.Module):
    policy = getattr(layer, "dw_policy", None)
    return policy if policy is not None and policy.support_mode else None


def begin_step(model: nn.Module, step: int) -> bool:
    """Set the refresh counter of every support-dW layer to `step` (optimizer steps done, 0-based) before
    the step's backward passes; returns whether this step is a refresh (False when no layer is in support
    mode)."""
    refresh = False
    for layer in support_layers(model).values():
        layer.dw_policy.step = int(step)
        refresh = refresh or layer.dw_policy.refresh()
    return refresh


def out_in_grad(layer: nn.Module) -> Tensor | None:
    """The weight's gradient in the [out, in] layout (None when there is none); a DTensor is gathered."""
    g = layer.weight.grad
    if g is None:
        return None
    if type(g).__name__ == "DTensor" and hasattr(g, "full_tensor"):
        g = g.full_tensor()
    return g.t() if getattr(layer, "_transposed", False) else g


def stored_index(layer: nn.Module, flat: Tensor) -> Tensor:
    """Flat indices over the [out, in] view converted to flat indices over the stored weight."""
    if not getattr(layer, "_transposed", False):
        return flat
    n, k = layer.weight_out_in().shape          # stored as [k, n]
    return (flat % k) * n + flat // k


def _end_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """The pre-hook: end_step of every support policy among `optimizer`'s parameters (module docstring)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            found = owner_of(p)
            if found is None or found[1] != "weight":
                continue
            layer = found[0]
            policy = _support_policy(layer)
            if policy is None:
                continue
            grad = out_in_grad(layer) if policy.refresh() else None
            w = layer.weight_out_in()
            if type(w).__name__ == "DTensor" and hasattr(w, "full_tensor"):
                w = w.full_tensor()
            policy.end_step(grad, w)


def install_step_hook() -> None:
    """Install the end-of-step pre-hook once per process (a SparseProduct does when it enters support mode)."""
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_pre_hook(_end_step)
