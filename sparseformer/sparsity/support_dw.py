"""Training with support-only weight gradients (docs/support-dw.md): the config wiring, the checkpointed
state, and what SparseAdamW does differently when a layer's dW is not dense.

A layer in support mode (layers/support_dw.py, kernels.spmm.DwPolicy) gets its weight gradient only at
its *computed* entries (support + tracked) on most steps and a dense one on refresh steps. Two choices
of the optimizer follow, both made once here:

- Adam moments of entries that got no gradient (`dw_moments`):
  "lazy" (default): they are left alone: m, v and the weight (zero) keep their values until the entry's
  next gradient, as in lazy/sparse Adam. A missing gradient is unknown, not zero.
  "decay": the missing gradient counts as zero: m and v decay every step (plain Adam on a zero gradient),
  so the moment built at a refresh fades and can still push the entry into the support for a few steps.
- The global gradient RMS normalisation (`dw_rms`):
  "tracked" (default): the RMS is taken over the entries that get a gradient on every step (the dense
  parameters and each support layer's support + tracked set), on refresh steps too, so the scale does
  not jump when the dense dW adds its off-support entries.
  "all": the formula of the dense method over every gradient as computed (zeros included), whose scale
  jumps at each refresh.
SparseAdamW records both scales, the off-support share of the squared gradient norm at refreshes (of all
gradients, and of the support-dW weights' alone) and how many weights entered the support (`DwStats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from .. import kernels
from ..config import SparsityConfig
from ..errors import ConfigError
from ..kernels.adamw import AdamWTensor, grad_norms, scale_from_norms
from ..layers import SparseProduct, owner_of
from ..layers.support_dw import begin_step, stored_index, support_layers

__all__ = ["DW_MOMENTS", "DW_RMS", "DwStats", "adamw_step_", "begin_step", "configure_dw", "dw_state",
           "load_dw_state", "rms_terms", "tracked_grads"]

DW_MOMENTS = ("lazy", "decay")
DW_RMS = ("tracked", "all")
TRACKED_SUFFIX = ".dw_tracked"       # checkpoint tensor name: "<weight name>.dw_tracked"


def configure_dw(model: nn.Module, cfg: SparsityConfig) -> dict[str, SparseProduct]:
    """Set the dW policy of every sparse linear layer of `model` (those holding a weight budget) from
    `cfg`; returns the layers now in support mode."""
    for m in model.modules():
        if isinstance(m, SparseProduct) and m.k is not None:
            m.set_dw_policy(cfg.dw_mode, cfg.dense_every, cfg.candidates)
    return support_layers(model)


def dw_state(model: nn.Module) -> dict[str, Tensor]:
    """The state a resumed run needs beyond the weights and moments: each support layer's tracked set,
    {"<weight name>.dw_tracked": int64 flat indices}. (The refresh counter is the run's step.)"""
    return {f"{name}.weight{TRACKED_SUFFIX}" if name else f"weight{TRACKED_SUFFIX}": layer.dw_policy.tracked.cpu()
            for name, layer in support_layers(model).items() if layer.dw_policy.tracked is not None}


def load_dw_state(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Restore what `dw_state` saved (entries absent from `tensors` are left empty)."""
    for name, layer in support_layers(model).items():
        key = f"{name}.weight{TRACKED_SUFFIX}" if name else f"weight{TRACKED_SUFFIX}"
        t = tensors.get(key)
        if t is not None:
            if t.dtype != torch.int64 or t.ndim != 1 or (t.numel() and int(t.max()) >= layer.weight.numel()):
                raise ConfigError(f"checkpoint tensor {key} is not a valid index set for {tuple(layer.weight.shape)}")
            layer.dw_policy.tracked = t.to(layer.weight.device)


@dataclass
class DwStats:
    """Counts since the last `row()`: refresh and support steps, weights that entered a support, scales."""
    steps: dict = field(default_factory=lambda: {"refresh": 0, "support": 0})
    layer_refreshes: int = 0                 # (layer, refresh step) pairs
    layer_refreshes_entered: int = 0         # ... in which at least one weight entered the support
    entered: dict = field(default_factory=lambda: {"refresh": 0, "support": 0})
    scale: dict = field(default_factory=dict)   # (kind, step type) -> sum of scales; kind "used" | "all" | "tracked"
    share: dict = field(default_factory=dict)   # "all" | "weights" -> sum over refreshes of the off-support share

    def add_scale(self, kind: str, step_type: str, value: float) -> None:
        key = (kind, step_type)
        self.scale[key] = self.scale.get(key, 0.0) + value

    def add_share(self, over: str, value: float) -> None:
        self.share[over] = self.share.get(over, 0.0) + value

    def row(self) -> dict:
        """The metrics of the window, then reset it."""
        out = {"dw_refresh_steps": self.steps["refresh"], "dw_support_steps": self.steps["support"],
               "dw_layer_refreshes": self.layer_refreshes, "dw_layer_refreshes_entered": self.layer_refreshes_entered,
               "dw_entered_at_refresh": self.entered["refresh"], "dw_entered_between": self.entered["support"]}
        for (kind, step_type), total in sorted(self.scale.items()):
            out[f"dw_scale_{kind}_{step_type}"] = round(total / max(self.steps[step_type], 1), 6)
        for over, total in sorted(self.share.items()):     # mean over the window's refresh steps
            out[f"dw_offsupport_share_{over}"] = round(total / max(self.steps["refresh"], 1), 6)
        self.__init__()
        return out


def _support_layer(p: Tensor) -> SparseProduct | None:
    found = owner_of(p)
    if found is None or found[1] != "weight":
        return None
    layer = found[0]
    return layer if isinstance(layer, SparseProduct) and layer.dw_policy.support_mode else None


def tracked_grads(params: list[Tensor], items: list[AdamWTensor]) -> list[Tensor]:
    """The gradients the "tracked" RMS is taken over: whole for dense parameters, the tracked entries (support
    included) of support-dW weights. Under FSDP, sum their squares and count their entries per rank
    (`rms_terms`) and all-reduce both."""
    out = []
    for p, it in zip(params, items):
        layer = _support_layer(p)
        tracked = layer.dw_policy.tracked if layer is not None else None
        out.append(it.grad if tracked is None else it.grad.reshape(-1)[stored_index(layer, tracked)])
    return out


def rms_terms(params: list[Tensor], items: list[AdamWTensor]) -> Tensor:
    """float64 [sum of squares, entry count] of `tracked_grads`: one rank's part of the "tracked" RMS."""
    grads = tracked_grads(params, items)
    sq = torch.stack([g.double().pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), dtype=torch.float64)
    return torch.stack([sq.cpu(), torch.tensor(float(sum(g.numel() for g in grads)), dtype=torch.float64)])


@torch.no_grad()
def adamw_step_(params: list[Tensor], items: list[AdamWTensor], *, moments: str, rms: str, grad_rms_norm: bool,
                backend: str | None, state, stats: DwStats | None) -> bool:
    """SparseAdamW's step when some of `params` (items[i] belongs to params[i]) are weights of support-dW
    layers: the scale and moments of the module docstring, then the same Adam / projection / decay. Returns
    False, having done nothing, when no parameter is in support mode."""
    layers = {i: lay for i, p in enumerate(params) if (lay := _support_layer(p)) is not None}
    if not layers:
        return False
    for i in layers:
        if items[i].param.numel() != params[i].numel():       # a shard (FSDP2) of the whole weight
            raise ConfigError(f"{items[i].name}: support dW on sharded parameters is not supported yet "
                              f"(its tracked indices cover the whole weight); use sparsity.dw_mode=dense with FSDP")
    # the policies' end_step (an optimizer pre-hook) has run: `computed` is what this step's backward passes
    # computed (None: a dense refresh), `tracked` the entries the coming support steps compute (incl. support)
    refresh = {i: lay.dw_policy.computed is None for i, lay in layers.items()}
    step_type = "refresh" if any(refresh.values()) else "support"
    grads, tracked = [it.grad for it in items], tracked_grads(params, items)
    norms = {"all": grad_norms(grads)}              # one pass over every gradient; the tracked parts are small
    norms["tracked"] = list(norms["all"])
    sub = grad_norms([tracked[i] for i in layers])
    for j, i in enumerate(layers):
        norms["tracked"][i] = sub[j]
    scales = {kind: scale_from_norms(norms[kind], sum(g.numel() for g in gs)) for kind, gs in (("all", grads),
                                                                                     ("tracked", tracked))}
    scale = scales[rms] if grad_rms_norm else 1.0
    before = {i: items[i].param != 0 for i in layers} if stats is not None else {}

    run, lazy = [], []
    for i, it in enumerate(items):
        computed = layers[i].dw_policy.computed if i in layers else None
        if moments == "lazy" and computed is not None:
            idx = stored_index(layers[i], computed)
            part = replace(it, param=it.param.reshape(-1)[idx], grad=it.grad.reshape(-1)[idx],
                           exp_avg=it.exp_avg.reshape(-1)[idx], exp_avg_sq=it.exp_avg_sq.reshape(-1)[idx],
                           k=None, protect=None, weight_decay=0.0)
            lazy.append((it, idx, part))
            run.append(part)
        else:
            run.append(it)
    kernels.sparse_adamw_step_(run, grad_rms_norm=False, backend=backend, state=state, grad_scale=scale)
    if lazy:
        _finish_lazy(lazy, backend)

    if stats is not None:
        stats.steps[step_type] += 1
        stats.add_scale("used", step_type, float(scale))
        for kind, value in scales.items():
            stats.add_scale(kind, step_type, float(value))
        if step_type == "refresh":            # the off-support part of the dense dW in the squared gradient norm
            for over, keep in (("all", range(len(items))), ("weights", layers)):
                sq = {kind: sum(float(norms[kind][i]) ** 2 for i in keep) for kind in norms}
                stats.add_share(over, 1 - sq["tracked"] / max(sq["all"], 1e-300))
        for i in layers:
            entered = int(((items[i].param != 0) & ~before[i]).sum())
            kind = "refresh" if refresh[i] else "support"
            stats.entered[kind] += entered
            if refresh[i]:
                stats.layer_refreshes += 1
                stats.layer_refreshes_entered += int(entered > 0)
    return True


def _finish_lazy(lazy: list, backend: str | None) -> None:
    """Write the updated entries back, then project and decay those tensors (Adam -> project -> decay)."""
    views, ks, js, names = [], [], [], []
    for it, idx, part in lazy:
        for full, sub in ((it.param, part.param), (it.exp_avg, part.exp_avg), (it.exp_avg_sq, part.exp_avg_sq)):
            full.view(-1)[idx] = sub
        if it.k is not None:
            view, j = kernels.protect_view(it.param, it.protect)
            views.append(view), ks.append(int(it.k)), js.append(j), names.append(it.name)
    if views:
        kernels.project_topk_(views, ks, protect_per_row=js, names=names, backend=backend)
    for it, _, _ in lazy:
        if it.weight_decay:
            it.param.mul_(1 - it.lr * it.weight_decay)
