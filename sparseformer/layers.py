"""SparseLinear, a drop-in nn.Linear with a sparse weight, and `sparsify`/`densify` for any torch model.

The hand-off format is the dense weight with zeros (as in torchao): `SparseLinear.weight` is an ordinary
dense-shaped Parameter that holds exact zeros off its support, so state dicts, init code, isinstance checks
and existing optimizers keep working. The top-k projection itself belongs to the optimizer: SparseAdamW
(sparseformer.sparsity.optimizer) projects every param group that carries a "k";
`sparse_param_groups(model, ...)` builds those groups for every SparseLinear of a model.

Format refresh (decided here): by default (`refresh="always"`) the plan and sparse format the kernels read
are rebuilt at every forward: one streaming pass over W (plus a device sync on a GPU), which is the
"rebuild after every step" the engine needs anyway. Always, because optimizers may update weights through
`.data` (SparseAdamW does), which leaves no trace in the weight's version counter. `refresh="version"`
caches the plan until the weight's version counter, storage, dtype or device changes: right for inference
and for optimizers that bump the version (in-place ops on the Parameter, or
torch.autograd.graph.increment_version after a `.data` update); after other `.data` writes call
`layer.refresh()` (or `refresh(model)`). In both modes values are read live: only the support is cached.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .kernels import project_topk_
from .kernels.spmm import DwPolicy, LinearPlan, plan_linear, sparse_linear

__all__ = ["SparseLinear", "densify", "refresh", "sparse_layers", "sparse_param_groups", "sparsify"]

log = logging.getLogger(__name__)

REFRESH_MODES = ("always", "version")


def _protect_tuple(protect) -> tuple[int, str] | None:
    if protect is None or protect == 0:
        return None
    if isinstance(protect, int):
        protect = (protect, "rows")
    j, axis = protect
    if int(j) < 0 or axis not in ("rows", "cols"):
        raise ConfigError(f"protect={protect!r}: want j >= 0 and axis 'rows' or 'cols', e.g. (4, 'rows')")
    return (int(j), axis) if int(j) > 0 else None


class SparseLinear(nn.Linear):
    """nn.Linear whose weight is kept sparse (exactly k non-zeros after each optimizer projection).

    k: top-k budget (None = dense: no projection, computes like nn.Linear). protect: j or (j, "rows"|"cols"),
    each output row (or input column) keeps its j largest weights. dw_mode: "dense" (default, the paper's
    gradient) or "support" (opt-in, changes the algorithm: dW only on the support plus candidates, dense
    every `dense_every` backward passes; see sparseformer.kernels.spmm). backend/method force a kernel
    backend or matmul method (default: chosen from the measured density). refresh: "always" or "version"
    (module docstring). With k given, the initial weight is projected to its top-k."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, k: int | None = None,
                 protect=None, dw_mode: str = "dense", dense_every: int = 0, candidates: float = 0.0,
                 backend: str | None = None, method: str | None = None, refresh: str = "always",
                 device=None, dtype=None):
        self._setup(k, protect, dw_mode, dense_every, candidates, backend, method, refresh)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    def _setup(self, k, protect, dw_mode, dense_every, candidates, backend, method, refresh="always") -> None:
        if k is not None and int(k) < 0:
            raise ConfigError(f"SparseLinear: k={k} must be >= 0 (or None for dense)")
        self.k = None if k is None else int(k)
        self.protect = _protect_tuple(protect)
        try:
            self.dw_policy = DwPolicy(dw_mode, dense_every, candidates)
        except ValueError as e:
            raise ConfigError(f"SparseLinear: {e}") from None
        if refresh not in REFRESH_MODES:
            raise ConfigError(f"SparseLinear: refresh={refresh!r} is unknown; choose one of {REFRESH_MODES}")
        self.backend, self.method, self.refresh_mode = backend, method, refresh
        self._plan: LinearPlan | None = None
        self._plan_key = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, k: int | None = None, protect=None, dw_mode: str = "dense",
                    dense_every: int = 0, candidates: float = 0.0, backend: str | None = None,
                    method: str | None = None, refresh: str = "always") -> "SparseLinear":
        """A SparseLinear sharing `linear`'s Parameter objects and hooks (no copy, no projection)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, value in vars(linear).items():          # hooks and training flag travel with the module
            if "hook" in name or name == "training":
                new.__dict__[name] = value
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        if linear.bias is None:
            new.register_parameter("bias", None)
        else:
            new.bias = linear.bias
        new._setup(k, protect, dw_mode, dense_every, candidates, backend, method, refresh)
        return new

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear sharing this layer's Parameters (the inverse of from_linear)."""
        lin = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(lin)
        for name, value in vars(self).items():
            if "hook" in name or name == "training":
                lin.__dict__[name] = value
        lin.in_features, lin.out_features = self.in_features, self.out_features
        lin.weight = self.weight
        if self.bias is None:
            lin.register_parameter("bias", None)
        else:
            lin.bias = self.bias
        return lin

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "k", None) is not None:
            self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        """Keep exactly k largest-|w| weights (with the protection), in place; no-op when k is None."""
        if self.k is not None:
            project_topk_([_protect_view(self.weight.data, self.protect)], [self.k],
                          protect_per_row=[self.protect[0] if self.protect else None], names=["weight"])
        self.refresh()

    def refresh(self) -> None:
        """Forget the cached sparse format; the next forward rebuilds it from the weight."""
        self._plan, self._plan_key = None, None

    @property
    def density(self) -> float:
        """Measured fraction of non-zero weights."""
        return int(torch.count_nonzero(self.weight)) / max(self.weight.numel(), 1)

    def plan(self, x: Tensor) -> LinearPlan:
        """The method plan (and sparse format) for inputs like `x`; rebuilt as the module docstring says."""
        w = self.weight
        dev = x.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        try:
            version = w._version
        except RuntimeError:       # inference tensors carry no version counter: rebuild every time
            version = None
        key = (version, w.data_ptr(), w.dtype, w.device, cdt, self.dw_policy.mode)
        if self.refresh_mode == "always" or version is None or key != self._plan_key or self._plan is None:
            self._plan = plan_linear(w, dtype=cdt, backend=self.backend, method=self.method,
                                     dw_mode=self.dw_policy.mode)
            self._plan_key = key
        return self._plan

    def forward(self, x: Tensor) -> Tensor:
        return sparse_linear(x, self.weight, self.bias, plan=self.plan(x), dw=self.dw_policy)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"k={self.k}", f"density={self.density:.4g}"]
        if self.protect:
            parts.append(f"protect={self.protect}")
        parts.append(f"dw_mode={self.dw_policy.mode!r}")
        if self.backend or self.method:
            parts.append(f"backend={self.backend!r}, method={self.method!r}")
        return ", ".join(parts)


def _protect_view(w: Tensor, protect) -> Tensor:
    return w.t() if protect and protect[1] == "cols" else w


def _patterns(value, what: str) -> list[re.Pattern]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for p in items:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"sparsify: {what} pattern {p!r} is not a valid regex ({e})") from None
    return out


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def sparsify(model: nn.Module, density: float, *, include=None, exclude=None, protect_per_row: int = 0,
             project: bool = True, dw_mode: str = "dense", dense_every: int = 0, candidates: float = 0.0,
             backend: str | None = None, method: str | None = None, refresh: str = "always") -> nn.Module:
    """In place: swap the nn.Linear modules of `model` for SparseLinear (k = floor(density * numel)); returns model.

    include/exclude: a regex or list of regexes searched in module names (e.g. r"mlp\\.", r"lm_head$"); a
    pattern that matches no nn.Linear is an error (typo catch). protect_per_row: each output row keeps its
    top-j weights. project: project the weights to their top-k now. Parameters, hooks and state_dict keys
    are kept; already-sparse layers (SparseLinear with a k) are left alone, so a second call does nothing.
    Modules whose forward is bypassed (e.g. nn.MultiheadAttention.out_proj) still get k and projection, and
    compute densely on their masked weight."""
    if isinstance(model, nn.Linear):
        raise ConfigError("sparsify: the model is itself an nn.Linear; wrap it (nn.Sequential(linear)) or build "
                          "SparseLinear.from_linear(linear, k=...) directly")
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ConfigError(f"sparsify: density={density!r} is outside (0, 1]; give the fraction of weights to keep")
    if int(protect_per_row) < 0:
        raise ConfigError(f"sparsify: protect_per_row={protect_per_row} must be >= 0")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    linears = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.Linear)]
    names = [n for n, _ in linears]
    for pat in inc + exc:
        if not any(pat.search(n) for n in names):
            raise ConfigError(f"sparsify: pattern {pat.pattern!r} matches no nn.Linear module; the Linear "
                              f"modules are: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    swapped: dict[int, SparseLinear] = {}
    for name, lin in linears:
        if (inc and not any(p.search(name) for p in inc)) or any(p.search(name) for p in exc):
            continue
        if isinstance(lin, SparseLinear) and (lin.k is not None or id(lin) in swapped):
            continue
        k = max(1, int(density * lin.weight.numel()))
        if protect_per_row and protect_per_row * lin.out_features > k:
            raise ConfigError(f"sparsify: protect_per_row={protect_per_row} needs {protect_per_row * lin.out_features}"
                              f" weights in {name!r} but density {density:g} gives k={k}; lower protect_per_row "
                              f"or raise density")
        new = swapped.get(id(lin))
        if new is None:
            opts = dict(protect=protect_per_row or None, dw_mode=dw_mode, dense_every=dense_every,
                        candidates=candidates, backend=backend, method=method, refresh=refresh)
            if isinstance(lin, SparseLinear):
                lin._setup(k, **opts)
                new = lin
            else:
                new = SparseLinear.from_linear(lin, k=k, **opts)
            swapped[id(lin)] = new
        _set_child(model, name, new)
    layers = list(swapped.values())
    if project and layers:
        with torch.no_grad():
            project_topk_([lay.weight.data for lay in layers], [lay.k for lay in layers],
                          protect_per_row=[lay.protect[0] if lay.protect else None for lay in layers],
                          names=[f"layer{i}" for i in range(len(layers))])
        for lay in layers:
            lay.refresh()
    total = sum(lay.weight.numel() for lay in layers)
    kept = sum(lay.k for lay in layers)
    log.info("sparsify: %d nn.Linear -> SparseLinear at density %.4g: %d weights, %d kept%s", len(layers),
             density, total, kept, "" if project else " (not projected yet)")
    return model


def densify(model: nn.Module) -> nn.Module:
    """In place: swap every SparseLinear back for an nn.Linear sharing its Parameters; returns model."""
    if isinstance(model, SparseLinear):
        raise ConfigError("densify: the model is itself a SparseLinear; use model.to_linear()")
    done: dict[int, nn.Linear] = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, SparseLinear):
            lin = done.setdefault(id(m), m.to_linear())
            _set_child(model, name, lin)
    log.info("densify: %d SparseLinear -> nn.Linear", len(done))
    return model


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear]:
    """Every SparseLinear of `model` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def refresh(model: nn.Module) -> None:
    """Forget the cached formats of every SparseLinear (after writing weights through .data)."""
    for m in sparse_layers(model).values():
        m.refresh()


def sparse_param_groups(model: nn.Module, *, lr: float | None = None, weight_decay: float = 0.0,
                        decay_1d: bool = False) -> list[dict]:
    """SparseAdamW param groups: one per SparseLinear weight with a k (its k, protection and name), then
    the remaining trainable parameters as a decayed group (>= 2-D) and a non-decayed one (1-D: biases,
    norms; decayed too when `decay_1d`). The trainer may change each group's "k" before a step."""
    groups: list[dict] = []
    seen: set[int] = set()
    extra = {} if lr is None else {"lr": lr}
    for name, m in sparse_layers(model).items():
        if m.k is None or id(m.weight) in seen or not m.weight.requires_grad:
            continue
        seen.add(id(m.weight))
        groups.append(dict(params=[m.weight], k=m.k, protect=m.protect, name=f"{name}.weight",
                           weight_decay=weight_decay, **extra))
    rest = _unique(p for p in model.parameters() if p.requires_grad and id(p) not in seen)
    decay = [p for p in rest if p.ndim >= 2 or decay_1d]
    no_decay = [p for p in rest if not (p.ndim >= 2 or decay_1d)]
    if decay:
        groups.append(dict(params=decay, k=None, name="dense_decay", weight_decay=weight_decay, **extra))
    if no_decay:
        groups.append(dict(params=no_decay, k=None, name="dense_no_decay", weight_decay=0.0, **extra))
    return groups


def _unique(params: Iterable[Tensor]) -> list[Tensor]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
