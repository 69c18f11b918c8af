"""Who owns k: a sparse module holds the top-k budget of its weight (and bias), and one function lists them.

A module that mixes in `SparseOwner` declares its sparse-capable tensors as slots: the weight (kind
"weight" or "embed", which anneal schedule it follows) and, where it has one, the bias (kind "bias"). Each
slot has a budget k (None: not sparse) and, for the weight, a protection (j, "rows"|"cols") on the stored
tensor: every row (or column) keeps its j largest entries. The training schedule writes k each step
(sparseformer.sparsity.params); optimizers read it (SparseAdamW by itself, any other through the step
hook below).

`sparse_tensors(model)` is the one list of a model's sparse tensors: (name, param, kind, k, protect, owner).
`owner_of(param)` finds the owner of a parameter without the model (what an optimizer has): owners record
their parameters in a weak, identity-keyed table whenever a parameter is set, a budget is written or the
module is copied, so the table never keeps a module or a tensor alive.

Exact k under any optimizer: the first budget written installs one optimizer step post-hook for the
process (torch.optim.optimizer.register_optimizer_step_post_hook). After every `step()` of any torch
optimizer it projects the parameters of that optimizer that an owner holds a k for, in one batched call.
Optimizers that project by themselves (SparseAdamW: `projects_sparse_tensors = True`) are skipped, so
nothing is projected twice. Their own update rule (decay order, no gradient normalisation) stays theirs;
the hook only restores exact k and the protected top-j.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import ConfigError
from ..kernels import project_topk_
from ..kernels import protect_view

__all__ = ["SparseOwner", "SparseTensor", "budget_of", "owner_of", "project_owned_", "sparse_tensors"]

KINDS = ("weight", "embed", "bias")
AXES = ("rows", "cols")

_OWNERS = WeakIdKeyDictionary()          # parameter -> (weakref to its owner module, slot name)


@dataclass
class SparseTensor:
    """One sparse tensor of a model and its owner."""
    name: str                      # parameter name in the model, e.g. "transformer.h.0.attn.c_attn.weight"
    param: nn.Parameter
    kind: str                      # "weight" | "embed" | "bias"
    k: int | None                  # top-k budget (None: declared sparse-capable, not sparse now)
    protect: tuple | None          # (j, "rows"|"cols") on the stored tensor, or None
    owner: nn.Module
    slot: str                      # "weight" | "bias": the owner's attribute


def protect_tuple(protect, axis: str = "rows") -> tuple[int, str] | None:
    """Normalise a protection: None/0, j (on `axis`) or (j, "rows"|"cols")."""
    if protect is None or protect == 0:
        return None
    if isinstance(protect, int):
        protect = (protect, axis)
    j, ax = protect
    if int(j) < 0 or ax not in AXES:
        raise ConfigError(f"protect={protect!r}: want j >= 0 and axis 'rows' or 'cols', e.g. (4, 'rows')")
    return (int(j), ax) if int(j) > 0 else None


class SparseOwner:
    """Mixin for an nn.Module holding the top-k budgets of its `weight` (and `bias`); see the module docstring.

    Attributes: `k` and `protect` (the weight's budget and protection), `bias_k`, `kind` (the weight's
    schedule kind) and `neuron_axis` (the side of the stored weight whose rows/columns are neurons: where
    a protected top-j per neuron applies). Mixed in before the nn.Module class."""

    k: int | None
    bias_k: int | None
    protect: tuple | None
    kind: str
    neuron_axis: str | None

    def _init_owner(self, k=None, protect=None, kind: str = "weight", neuron_axis: str | None = "rows",
                    bias_k=None) -> None:
        if kind not in KINDS[:2]:
            raise ConfigError(f"{type(self).__name__}: kind={kind!r}; choose 'weight' or 'embed'")
        if neuron_axis not in (*AXES, None):
            raise ConfigError(f"{type(self).__name__}: neuron_axis={neuron_axis!r}; choose 'rows', 'cols' or None")
        self.__dict__.update(kind=kind, neuron_axis=neuron_axis, k=None, bias_k=None, protect=None)
        self.set_budget("weight", k, protect)
        self.set_budget("bias", bias_k)

    def sparse_slots(self) -> list[tuple[str, str, int | None, tuple | None]]:
        """(slot, kind, k, protect) of each sparse-capable tensor this module has."""
        out = [("weight", self.kind, self.k, self.protect)]
        if getattr(self, "bias", None) is not None:
            out.append(("bias", "bias", self.bias_k, None))
        return out

    def set_budget(self, slot: str, k: int | None, protect=None) -> None:
        """Write the k (and, for the weight, the protection) of one slot; the schedule calls this each step."""
        p = getattr(self, slot, None)
        if k is not None:
            k = int(k)
            size = p.numel() if p is not None else None
            if k < 0 or (size is not None and k > size):
                raise ConfigError(f"{type(self).__name__}.{slot}: k={k} is outside [0, {size}]")
        if slot == "weight":
            self.__dict__["k"] = k
            self.__dict__["protect"] = protect_tuple(protect, self.neuron_axis or "rows")
        elif slot == "bias":
            self.__dict__["bias_k"] = k
        else:
            raise ConfigError(f"{type(self).__name__}: no sparse slot {slot!r}")
        self._register_owned()
        if k is not None:
            _install_step_hook()

    def _register_owned(self) -> None:
        ref = weakref.ref(self)
        for slot in ("weight", "bias"):
            p = self._parameters.get(slot) if "_parameters" in self.__dict__ else None
            if p is not None:
                _OWNERS[p] = (ref, slot)

    def _unregister_owned(self) -> None:
        """Drop this module's entries (densify calls it: the parameters live on in a plain module)."""
        for slot in ("weight", "bias"):
            p = self._parameters.get(slot)
            if p is not None and p in _OWNERS and _OWNERS[p][0]() is self:
                del _OWNERS[p]

    # every way a parameter object can change keeps the table current; defining __setattr__ also makes
    # FSDP2 set its sharded and unsharded parameters through it rather than into _parameters directly
    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)

    def register_parameter(self, name, param) -> None:
        super().register_parameter(name, param)
        if "kind" in self.__dict__:
            self._register_owned()

    def __setstate__(self, state) -> None:          # deepcopy and pickle
        super().__setstate__(state)
        self._register_owned()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._register_owned()
        return out

    @torch.no_grad()
    def project_(self) -> None:
        """Keep exactly k largest-|w| entries of each sparse slot (with the protection), in place."""
        project_owned_([t for t in _slots_of(self, "") if t.k is not None])


def _slots_of(owner: nn.Module, prefix: str) -> list[SparseTensor]:
    out = []
    for slot, kind, k, protect in owner.sparse_slots():
        p = getattr(owner, slot, None)
        if p is not None:
            out.append(SparseTensor(f"{prefix}{slot}", p, kind, k, protect, owner, slot))
    return out


def sparse_tensors(model: nn.Module, *, declared: bool = False) -> list[SparseTensor]:
    """Every sparse tensor of `model` (k set), in module order, each once; `declared=True` also lists the
    sparse-capable tensors whose k is None."""
    out, seen = [], set()
    for mod_name, m in model.named_modules():
        if not isinstance(m, SparseOwner):
            continue
        m._register_owned()
        for t in _slots_of(m, f"{mod_name}." if mod_name else ""):
            if id(t.param) in seen or (t.k is None and not declared):
                continue
            seen.add(id(t.param))
            out.append(t)
    return out


def owner_of(param: torch.Tensor) -> tuple[nn.Module, str] | None:
    """(owner module, slot) of a parameter, or None when no live SparseOwner holds it."""
    entry = _OWNERS.get(param)
    if entry is None:
        return None
    owner = entry[0]()
    if owner is None or owner._parameters.get(entry[1]) is not param:
        return None
    return owner, entry[1]


def budget_of(param: torch.Tensor) -> tuple[int | None, tuple | None]:
    """(k, protect) of a parameter from its owner; (None, None) when it has none."""
    found = owner_of(param)
    if found is None:
        return None, None
    owner, slot = found
    return (owner.k, owner.protect) if slot == "weight" else (owner.bias_k, None)


@torch.no_grad()
def project_owned_(tensors: list[SparseTensor]) -> None:
    """Project each tensor to its k (one batched call), then let the owners drop their cached formats.

    A parameter sharded by FSDP2 (a DTensor) is gathered whole, projected exactly, and its shard written
    back: every rank computes the same global top-k."""
    live = [t for t in tensors if t.k is not None and t.k < t.param.numel()]
    if live:
        views, ks, js, sharded = [], [], [], []
        for t in live:
            data = t.param.data
            if _is_dtensor(data):
                full = data.full_tensor()
                sharded.append((data, full))
                data = full
            view, j = protect_view(data, t.protect)
            views.append(view), ks.append(t.k), js.append(j)
        project_topk_(views, ks, protect_per_row=js, names=[t.name for t in live])
        for dt, full in sharded:
            from torch.distributed.tensor import distribute_tensor
            dt.to_local().copy_(distribute_tensor(full, dt.device_mesh, dt.placements).to_local())
    for owner in {id(t.owner): t.owner for t in tensors}.values():
        if hasattr(owner, "refresh"):
            owner.refresh()


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


_HOOK = None        # the handle of the process-wide optimizer step post-hook


def _install_step_hook() -> None:
    global _HOOK
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_project_after_step)


def _project_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Keep the owned parameters of `optimizer` at exactly their k (see the module docstring)."""
    if getattr(optimizer, "projects_sparse_tensors", False):
        return
    tensors = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            found = owner_of(p)
            if found is None:
                continue
            owner, slot = found
            k, protect = budget_of(p)
            if k is not None:
                kind = owner.kind if slot == "weight" else "bias"
                tensors.append(SparseTensor(f"{type(owner).__name__}.{slot}", p, kind, k, protect, owner, slot))
    if tensors:
        project_owned_(tensors)
