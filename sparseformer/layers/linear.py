"""SparseLinear: an nn.Linear whose weight (and optionally bias) is kept at exactly k non-zeros.

The hand-off format is the dense weight with zeros (as in torchao): `weight` is an ordinary dense-shaped
Parameter holding exact zeros off its support, so state dicts, init code, isinstance checks and existing
optimizers keep working. The layer holds k (owner.py); the projection to k happens after each optimizer
step (SparseAdamW's fused one, or the step hook of owner.py under any other optimizer).

Format refresh: by default (`refresh="always"`) the plan and sparse format the kernels read are rebuilt at
every forward: one streaming pass over W (plus a device sync on a GPU when a sparse method runs), the
"rebuild after every step" the engine needs anyway. Always, because optimizers may update weights through
`.data` (SparseAdamW does), which leaves no trace in the weight's version counter. `refresh="version"`
caches the plan until the weight's version counter, storage, dtype or device changes: right for inference
and for optimizers that bump the version; after other `.data` writes call `layer.refresh()`. In both modes
values are read live: only the support is cached. The method is chosen from k / numel when k is set (no
pass over W to measure the density), else from the measured density.

Handed-over formats: SparseAdamW projects the weight itself, so after its step it builds the formats of
all layers whose last plan read one in one batched call (kernels.emit_formats; `hand_off_formats` below)
and hands each layer its own (`set_format`). The layer plans with that format instead of rebuilding one
until the weight's version counter or storage changes, `refresh()` is called or the next step hands over
another: code that changes the support through `.data` between steps calls `refresh()`, as in "version"
mode. Under torch.compile the products run as custom ops (sparseformer.kernels.spmm.ops) with the method
chosen outside the graph, so a compiled model has no graph break and no host sync per forward; the
"support" dW is eager-only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..kernels import SparseWeight, emit_formats
from ..kernels.spmm import METHODS, DwPolicy, LinearPlan, choose_method, plan_linear, sparse_linear
from ..kernels.spmm import ops as spmm_ops
from ..kernels.spmm.autograd import compute_dtype
from .owner import SparseOwner, owner_of
from .support_dw import install_step_hook

__all__ = ["SparseLinear", "SparseProduct", "hand_off_formats"]


@torch.compiler.assume_constant_result
def _traced_method(layer: "SparseProduct", dtype: torch.dtype) -> str:
    """The method of a layer's products under torch.compile: run at trace time, a constant of the graph
    (kernels/spmm/ops.py says why), read without guards so that a new k does not recompile."""
    w = layer.weight
    return choose_method(w.device, dtype, layer.known_density(), backend=layer.backend, method=layer.method)

REFRESH_MODES = ("always", "version")


class SparseProduct(SparseOwner):
    """Mixin for a SparseOwner whose forward is y = x W^T + b, W the [out, in] view of its weight
    (`weight_out_in`), computed by the sparse matmuls. Holds the dW policy, the forced backend/method and
    the cached plan (module docstring)."""

    def _setup(self, dw_mode="dense", dense_every=0, candidates=0.0, backend=None, method=None,
               refresh="always") -> None:
        if refresh not in REFRESH_MODES:
            raise ConfigError(f"{type(self).__name__}: refresh={refresh!r} is unknown; choose one of {REFRESH_MODES}")
        self.__dict__.update(backend=backend, method=method, refresh_mode=refresh, _plan=None, _plan_key=None,
                             _handed=None, _handed_key=None)
        self.set_dw_policy(dw_mode, dense_every, candidates)

    def set_dw_policy(self, dw_mode: str = "dense", dense_every: int = 0, candidates: float = 0.0) -> None:
        """Set how this layer's weight gradient is computed (a fresh DwPolicy: counter 0, nothing tracked);
        "support" installs the end-of-step optimizer hook of support_dw.py."""
        try:
            policy = DwPolicy(dw_mode, dense_every, candidates)
        except ValueError as e:
            raise ConfigError(f"{type(self).__name__}: {e}") from None
        self.__dict__["dw_policy"] = policy
        if policy.support_mode:
            install_step_hook()

    def weight_out_in(self) -> Tensor:
        """The weight as [out, in] (a view; nn.Linear stores it so)."""
        return self.weight

    def refresh(self) -> None:
        """Forget the cached and the handed-over sparse format; the next forward rebuilds it from the weight."""
        self._plan, self._plan_key = None, None
        self._handed, self._handed_key = None, None

    def format_request(self) -> tuple[bool, ...] | None:
        """What the next step's emitted format should hold: None when the last plan read no format (masked
        dense, or no plan yet), else the padded-row orientations its methods read (False: W, True: W^T)."""
        plan = self._plan
        if plan is None or plan.sw is None:
            return None
        return tuple(o for name, o in ((plan.fwd, False), (plan.dx, True)) if METHODS[name].fmt == "ell")

    def set_format(self, sw: SparseWeight) -> None:
        """Hand over the format of the weight's current support (module docstring); the next plan uses it."""
        self._handed, self._handed_key = sw, _support_key(self.weight_out_in())
        self._plan_key = None             # replan at the next forward (the last plan says what to request)

    def handed_format(self) -> SparseWeight | None:
        """The handed-over format while it still describes the weight, else None (and it is dropped)."""
        key = _support_key(self.weight_out_in())
        if self._handed is not None and (key is None or key != self._handed_key):
            self._handed, self._handed_key = None, None
        return self._handed

    @property
    def density(self) -> float:
        """Measured fraction of non-zero weights."""
        return int(torch.count_nonzero(self.weight)) / max(self.weight.numel(), 1)

    def known_density(self) -> float | None:
        """k / numel when the layer has a budget (what it holds after every step), else None."""
        n = max(self.weight.numel(), 1)
        return None if self.k is None else min(self.k, n) / n

    def plan(self, x: Tensor) -> LinearPlan:
        """The method plan (and sparse format) for inputs like `x`; rebuilt as the module docstring says."""
        w = self.weight_out_in()
        dev = x.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        try:
            version = w._version
        except RuntimeError:       # inference tensors carry no version counter: rebuild every time
            version = None
        key = (version, w.data_ptr(), w.dtype, w.device, cdt, self.k)
        if self.refresh_mode == "always" or version is None or key != self._plan_key or self._plan is None:
            self._plan = plan_linear(w, dtype=cdt, backend=self.backend, method=self.method,
                                     density=self.known_density(), sw=self.handed_format())
            self._plan_key = key
        return self._plan

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_out_in()
        if torch.compiler.is_compiling():
            if self.dw_policy.mode != "dense":
                raise ConfigError(f"{type(self).__name__}: dw_mode={self.dw_policy.mode!r} runs eagerly only; "
                                  f"use dw_mode='dense' under torch.compile")
            x = x.to(compute_dtype(x, w))
            method = _traced_method(self, x.dtype)
            return spmm_ops.linear(x, w, self.bias, method)
        return sparse_linear(x, w, self.bias, plan=self.plan(x), dw=self.dw_policy)

    def sparse_repr(self) -> str:
        """k, density, protection, dW mode and forced kernels, for extra_repr."""
        parts = [f"k={self.k}"]
        if self.k is not None:
            parts.append(f"density={self.known_density():.4g}")
        if self.bias_k is not None:
            parts.append(f"bias_k={self.bias_k}")
        if self.protect:
            parts.append(f"protect={self.protect}")
        parts.append(f"dw_mode={self.dw_policy.mode!r}")
        if self.dw_policy.support_mode:
            parts.append(f"dense_every={self.dw_policy.dense_every}, candidates={self.dw_policy.candidates:g}")
        if self.backend or self.method:
            parts.append(f"backend={self.backend!r}, method={self.method!r}")
        return ", ".join(parts)


class SparseLinear(SparseProduct, nn.Linear):
    """nn.Linear whose weight is kept sparse (exactly k non-zeros after each optimizer step).

    k: top-k budget of the weight (None = dense: computes like nn.Linear). protect: j or (j, "rows"|"cols"):
    each output row (or input column) keeps its j largest weights. bias_k: budget of the bias (None =
    dense). kind: "weight" or "embed", the schedule the weight follows in training. neuron_axis: where a
    per-neuron protection applies ("rows": output neurons). dw_mode: "dense" (default, the paper's
    gradient) or "support" (opt-in, changes the algorithm; docs/support-dw.md), with a dense dW every
    `dense_every` optimizer steps and `candidates` x k tracked entries.
    backend/method force a kernel backend or matmul method (default: chosen from the density). refresh:
    "always" or "version" (module docstring). With k given, the initial weight is projected to its top-k."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, k: int | None = None,
                 protect=None, bias_k: int | None = None, kind: str = "weight", neuron_axis: str | None = "rows",
                 dw_mode: str = "dense", dense_every: int = 0, candidates: float = 0.0,
                 backend: str | None = None, method: str | None = None, refresh: str = "always",
                 device=None, dtype=None):
        if k is not None and not 0 <= int(k) <= in_features * out_features:
            raise ConfigError(f"SparseLinear: k={k} is outside [0, {in_features * out_features}] "
                              f"(or None for dense)")
        self._setup(dw_mode, dense_every, candidates, backend, method, refresh)
        self._init_owner(k, protect, kind, neuron_axis, bias_k)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, k: int | None = None, protect=None, **options) -> "SparseLinear":
        """A SparseLinear sharing `linear`'s Parameter objects and hooks (no copy, no projection)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        layer_opts = {o: options.pop(o) for o in ("kind", "neuron_axis", "bias_k") if o in options}
        new._setup(**options)
        new._init_owner(k, protect, **layer_opts)
        return _share(linear, new)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear sharing this layer's Parameters (the inverse of from_linear)."""
        lin = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(lin)
        return _share(self, lin)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "k", None) is not None:
            self.project_()

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self.sparse_repr()}"


def _support_key(w: Tensor) -> tuple | None:
    """What a handed-over format is valid for: the weight's version counter, storage, shape and dtype
    (None for an inference tensor, which has no version counter: never matched)."""
    try:
        return (w._version, w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w.device)
    except RuntimeError:
        return None


@torch.no_grad()
def hand_off_formats(params: list[nn.Parameter], caps: list[int], backend: str | None = None) -> int:
    """After a projection that left each of `params` with at most caps[i] non-zeros: build, in one
    batched call, the formats of those whose owner's planned method reads one (`format_request`), and
    hand each owner its own. Returns how many were handed over."""
    owners, weights, keep, ell = [], [], [], []
    for p, cap in zip(params, caps):
        found = owner_of(p)
        if found is None or found[1] != "weight" or not isinstance(found[0], SparseProduct):
            continue
        request = found[0].format_request()
        if request is None:
            continue
        owners.append(found[0]), weights.append(found[0].weight_out_in().detach()), keep.append(cap)
        ell.append(request)
    for owner, sw in zip(owners, emit_formats(weights, keep, ell=ell, backend=backend)):
        owner.set_format(sw)
    return len(owners)


def _share(src: nn.Linear, dst: nn.Linear) -> nn.Linear:
    """Give `dst` the sizes, Parameter objects, hooks and training flag of `src`; returns dst."""
    for name, value in vars(src).items():
        if "hook" in name or name == "training":
            dst.__dict__[name] = value
    dst.in_features, dst.out_features = src.in_features, src.out_features
    dst.weight = src.weight
    if src.bias is None:
        dst.register_parameter("bias", None)
    else:
        dst.bias = src.bias
    return dst
