"""`sparsify(model, density)` and `densify(model)`: swap a model's nn.Linear modules for SparseLinear and back.

The swap keeps the same Parameter objects, hooks, device, dtype and state-dict keys; each swapped layer holds
its k = floor(density * numel), and the weights are projected to it at once unless `project=False`.
"""

from __future__ import annotations

import logging
import re

from torch import nn

from ..errors import ConfigError
from .linear import SparseLinear
from .owner import project_owned_, sparse_tensors

__all__ = ["densify", "refresh", "sparse_layers", "sparsify"]

log = logging.getLogger(__name__)


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
            opts = dict(dw_mode=dw_mode, dense_every=dense_every, candidates=candidates, backend=backend,
                        method=method, refresh=refresh)
            if isinstance(lin, SparseLinear):
                lin._setup(**opts)
                lin.set_budget("weight", k, protect_per_row or None)
                new = lin
            else:
                new = SparseLinear.from_linear(lin, k=k, protect=protect_per_row or None, **opts)
            swapped[id(lin)] = new
        _set_child(model, name, new)
    layers = list(swapped.values())
    if project and layers:
        project_owned_([t for t in sparse_tensors(model) if t.owner in layers and t.slot == "weight"])
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
            m._unregister_owned()
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
