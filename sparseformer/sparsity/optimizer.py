"""SparseAdamW: the paper's optimizer step, with the top-k projection inside it.

One step, in this order:
1. global gradient RMS normalisation: rms = ||g||_2 / sqrt(N) over every parameter with a gradient,
   g <- g / (rms + 1e-5) (always, not only when rms > 1);
2. Adam with dense moments (beta1, beta2, eps; bias-corrected), p <- p - lr * m_hat / (sqrt(v_hat) + eps);
3. projection: every parameter with a budget k keeps exactly its k largest |p| (sparseformer.kernels, one
   batched call), optionally protecting each row's or column's top-j;
4. decoupled weight decay p <- p - lr * weight_decay * p (after the projection, so zeros stay zero).

Weights of layers with support-only dW (dw_mode="support") get no gradient off their support and tracked
entries between dense refreshes; `dw_moments` and `dw_rms` say what steps 1-2 do then (support_dw.py,
docs/support-dw.md). With every layer's dW dense (the default) they change nothing.

The budget of a parameter comes from the layer that owns it (sparseformer.layers: SparseLinear,
SparseEmbedding, any module `sparsify` converted), so `SparseAdamW(model.parameters())` keeps every sparse
layer at its k. A param group may still carry "k" and "protect" ((j, "rows"|"cols")) for tensors no layer
owns; a group's k wins over the owner's. A k at or above the tensor's size means no projection. Because it
projects itself, the step hook that keeps k under other optimizers skips it (docs/dropin.md). The
arithmetic lives in sparseformer.kernels.sparse_adamw_step_: on CPU the torch reference; on a GPU one fused
pass for steps 1-2 (and the projection's first histogram, warm-started from the previous step's
thresholds), then the batched projection.

After the step, the weights whose layer last planned a sparse method (one that reads a format; masked
dense reads none) get their format for the next forward in one batched call (`emit_formats=True`, the
default; sparseformer.layers.linear.hand_off_formats), so those layers do not rebuild it from the weight.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..kernels.adamw import GRAD_RMS_EPS, AdamWTensor
from ..layers.linear import hand_off_formats
from ..layers.owner import budget_of
from . import support_dw

__all__ = ["GRAD_RMS_EPS", "SparseAdamW"]


class SparseAdamW(torch.optim.Optimizer):
    """Adam + top-k projection + decoupled weight decay; see the module docstring."""

    projects_sparse_tensors = True      # the exact-k step hook leaves this optimizer's parameters alone

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.95), eps: float = 0.1, weight_decay: float = 0.0,
                 grad_rms_norm: bool = True, backend: str | None = None, emit_formats: bool = True,
                 dw_moments: str = "lazy", dw_rms: str = "tracked"):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"SparseAdamW: bad hyperparameters lr={lr} betas={betas} eps={eps}")
        if dw_moments not in support_dw.DW_MOMENTS or dw_rms not in support_dw.DW_RMS:
            raise ValueError(f"SparseAdamW: dw_moments={dw_moments!r} (choose from {support_dw.DW_MOMENTS}) or "
                             f"dw_rms={dw_rms!r} (choose from {support_dw.DW_RMS}) is unknown")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, k=None, protect=None,
                        name=None)
        super().__init__(params, defaults)
        self.grad_rms_norm = grad_rms_norm
        self.backend = backend
        self.emit_formats = emit_formats
        self._topk_state = kernels.TopkState()       # warm start of the projection (device backends)
        self.dw_moments, self.dw_rms = dw_moments, dw_rms
        self.dw_stats = support_dw.DwStats()          # support-dW layers only: read by the trainer

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, items = self._collect()
        # support-dW layers (support_dw.py) take their own scale and moments; otherwise the plain step
        if not support_dw.adamw_step_(params, items, moments=self.dw_moments, rms=self.dw_rms,
                                      grad_rms_norm=self.grad_rms_norm, backend=self.backend,
                                      state=self._topk_state, stats=self.dw_stats):
            self._step(items)
        if self.emit_formats:
            self._hand_off(params, items)
        return loss

    def _hand_off(self, params: list, items: list[AdamWTensor]) -> None:
        """Hand the layers the formats of their projected weights (module docstring). Parameters that are
        one rank's part of a tensor (global_shape set) are left alone: their layers build their own."""
        whole = [(p, it.k) for p, it in zip(params, items) if it.k is not None and it.global_shape is None]
        if whole:
            hand_off_formats([p for p, _ in whole], [k for _, k in whole], backend=self.backend)

    def _step(self, items: list[AdamWTensor]) -> None:
        """The arithmetic of one step over `items` (sparseformer.kernels.sparse_adamw_step_)."""
        kernels.sparse_adamw_step_(items, grad_rms_norm=self.grad_rms_norm, backend=self.backend,
                                   state=self._topk_state)

    def _collect(self) -> tuple[list, list[AdamWTensor]]:
        """The parameters with a gradient and one AdamWTensor each, its moments created on first use."""
        params, items = [], []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                param, grad, where = self._local(p)
                if grad.is_sparse:
                    raise ValueError("SparseAdamW does not take sparse gradients; use dense .grad tensors")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                k, protect = group["k"], group["protect"]
                if k is None:
                    k, protect = budget_of(p)
                if k is not None and k >= p.numel():
                    k = None                                    # the whole tensor: nothing to project
                name = group["name"] or "params"
                name = name if len(group["params"]) == 1 else f"{name}[{i}]"      # for error messages
                if k is not None:
                    kernels.protect_view(param, protect)        # validates the axis early
                params.append(p)
                items.append(AdamWTensor(
                    param=param, grad=grad, exp_avg=state["exp_avg"], exp_avg_sq=state["exp_avg_sq"],
                    step=int(state["step"]), lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                    eps=float(group["eps"]), weight_decay=float(group["weight_decay"] or 0.0),
                    k=None if k is None else int(k), protect=protect, name=name, **where))
        return params, items

    def _local(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The tensors this process steps for parameter `p` (its data and gradient), and where they sit
        in the whole tensor (AdamWTensor's global_shape and row_offset; none here: the whole of it).
        sparseformer.distributed overrides it for parameters sharded across ranks."""
        return p.data, p.grad, {}
