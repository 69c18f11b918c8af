"""`sparsify(model, density)` makes any model weight-sparse in place; `densify(model)` undoes it.

Every module an adapter knows (adapters.py: nn.Linear, Hugging Face Conv1D, registered ones) becomes
sparse-capable and holds its k = floor(density * numel); the weights are projected to it at once unless
`project=False`. From then on the model stays at exactly k under any torch optimizer (owner.py's step
hook; SparseAdamW projects by itself). Parameter objects, hooks, device, dtype and state-dict keys are
kept, so a state dict loads into a fresh sparsified model and into the plain model alike. See
docs/dropin.md.
"""

from __future__ import annotations

import logging
import re

from torch import nn

from ..errors import ConfigError
from .adapters import adapter_for, convert, restore
from .linear import SparseProduct
from .owner import project_owned_, sparse_tensors

__all__ = ["densify", "refresh", "sparse_layers", "sparsify", "summary"]

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


def _budget(name: str, numel: int, density: float, overrides: dict) -> int:
    """k of one module: the first override whose pattern matches its name (a density in (0, 1] or an exact
    int k), else floor(density * numel), at least 1."""
    value = next((v for pat, v in overrides.items() if pat.search(name)), density)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"sparsify: the budget of {name!r} is {value!r}; give a density in (0, 1] or an int k")
    if isinstance(value, int) and value != density:
        if not 0 <= value <= numel:
            raise ConfigError(f"sparsify: k={value} for {name!r} is outside [0, {numel}] (its weight has "
                              f"{numel} entries)")
        return value
    if not 0 < value <= 1:
        raise ConfigError(f"sparsify: density={value!r} for {name!r} is outside (0, 1]; give the fraction to keep")
    return max(1, int(value * numel))


def _tied(model: nn.Module) -> dict[int, list[str]]:
    """Names of the distinct modules that hold each parameter, for parameters held by more than one."""
    holders: dict[int, dict[int, str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                holders.setdefault(id(p), {}).setdefault(id(m), name)
    return {pid: list(mods.values()) for pid, mods in holders.items() if len(mods) > 1}


def sparsify(model: nn.Module, density: float, *, include=None, exclude=None, overrides: dict | None = None,
             protect_per_row: int = 0, tied: bool = False, project: bool = True, dw_mode: str = "dense",
             dense_every: int = 0, candidates: float = 0.0, backend: str | None = None, method: str | None = None,
             refresh: str = "always") -> nn.Module:
    """In place: make the weights of `model`'s linear-like modules sparse at `density`; returns model.

    include/exclude: a regex or list of regexes searched in module names (r"mlp\\.", r"lm_head$"). overrides:
    {regex: density or int k} for the modules it matches (first match wins). protect_per_row: each output
    neuron keeps its top-j weights (rows of an nn.Linear, columns of a Conv1D). tied: also sparsify a
    weight that another module shares (an lm_head tied to the embedding); by default such modules are
    skipped and reported. project: project the weights to their k now. Modules already holding a k are
    left alone, so a second call does nothing. One INFO log line per converted module (name, type, shape,
    k); `summary(model)` returns the same rows. Raises ConfigError when a pattern matches no module, when
    an included module has no adapter, when nothing is left to sparsify, and for a k out of range."""
    if adapter_for(model) is not None or isinstance(model, SparseProduct):
        raise ConfigError(f"sparsify: the model is itself a {type(model).__name__}; wrap it "
                          f"(nn.Sequential(module)) or build SparseLinear.from_linear(linear, k=...) directly")
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ConfigError(f"sparsify: density={density!r} is outside (0, 1]; give the fraction of weights to keep")
    if int(protect_per_row) < 0:
        raise ConfigError(f"sparsify: protect_per_row={protect_per_row} must be >= 0")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    over = {re.compile(p): v for p, v in (overrides or {}).items()}
    modules = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n]
    names = [n for n, _ in modules]
    for pat in inc + exc + list(over):
        if not any(pat.search(n) for n in names):
            raise ConfigError(f"sparsify: pattern {pat.pattern!r} matches no module; the modules are: "
                              f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    chosen = []
    for name, m in modules:
        if (inc and not any(p.search(name) for p in inc)) or any(p.search(name) for p in exc):
            continue
        adapter = adapter_for(m)
        if adapter is None and inc and not isinstance(m, SparseProduct) and any(p.fullmatch(name) for p in inc):
            raise ConfigError(f"sparsify: {name!r} is a {type(m).__name__}, which sparsify does not convert; it "
                              f"converts nn.Linear and Conv1D, and other modules with a 2-D weight through "
                              f"register_adapter (docs/dropin.md)")
        if adapter is not None:
            chosen.append((name, m, adapter))
    if not chosen and any(isinstance(m, SparseProduct) for _, m in modules):
        log.info("sparsify: every matching module already holds a k; nothing to do")
        return model
    if not chosen:
        raise ConfigError(f"sparsify: nothing to sparsify in {type(model).__name__}: no nn.Linear, Conv1D or "
                          f"registered module without a budget matched; see register_adapter (docs/dropin.md)")
    tied_to = _tied(model)
    opts = dict(dw_mode=dw_mode, dense_every=dense_every, candidates=candidates, backend=backend, method=method,
                refresh=refresh)
    budgets: dict[int, int] = {}            # every check first, so that an error leaves the model untouched
    skipped: dict[str, list[str]] = {}
    for name, m, adapter in chosen:
        shared = tied_to.get(id(m.weight))
        if id(m) in budgets or (shared and not tied and skipped.setdefault(name, [n for n in shared if n != name])):
            continue
        out_features = m.weight.shape[1 if adapter.transposed else 0]
        budgets[id(m)] = k = _budget(name, m.weight.numel(), density, over)
        if protect_per_row and protect_per_row * out_features > k:
            raise ConfigError(f"sparsify: protect_per_row={protect_per_row} needs {protect_per_row * out_features}"
                              f" weights in {name!r} but its budget is k={k}; lower protect_per_row or raise "
                              f"the density")
    done: dict[int, nn.Module] = {}
    for name, m, adapter in chosen:
        if id(m) in budgets and id(m) not in done:
            done[id(m)] = convert(m, adapter, budgets[id(m)], protect_per_row or None, **opts)
        if id(m) in done and done[id(m)] is not m:
            _set_child(model, name, done[id(m)])
    for name, others in skipped.items():
        log.warning("sparsify: skipped %s: its weight is tied to %s; pass tied=True to sparsify it too (the "
                    "shared tensor then holds k for every user)", name, ", ".join(others))
    layers = list(done.values())
    if project and layers:
        project_owned_([t for t in sparse_tensors(model) if t.slot == "weight" and any(t.owner is m for m in layers)])
    rows = summary(model)
    for r in rows:
        log.info("sparsify: %s (%s %s) k=%d (density %.4g)", r["module"], r["type"], "x".join(map(str, r["shape"])),
                 r["k"], r["density"])
    log.info("sparsify: %d modules sparse at density %.4g: %d weights, %d kept%s; %d tied skipped", len(layers),
             density, sum(m.weight.numel() for m in layers), sum(m.k for m in layers),
             "" if project else " (not projected yet)", len(skipped))
    return model


def summary(model: nn.Module) -> list[dict]:
    """One row per sparse module weight: module name, type, stored shape, k and k / numel."""
    return [dict(module=t.name.rpartition(".")[0], type=type(t.owner).__name__, shape=list(t.param.shape), k=t.k,
                 density=t.k / max(t.param.numel(), 1))
            for t in sparse_tensors(model) if t.slot == "weight" and isinstance(t.owner, SparseProduct)]


def densify(model: nn.Module) -> nn.Module:
    """In place: every module sparsify converted becomes its plain self again, sharing its Parameters (the
    inverse of sparsify); returns model."""
    if isinstance(model, SparseProduct):
        raise ConfigError(f"densify: the model is itself a {type(model).__name__}; use restore(module) or "
                          f"SparseLinear.to_linear()")
    done: dict[int, nn.Module] = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, SparseProduct):
            plain = done[id(m)] if id(m) in done else done.setdefault(id(m), restore(m))
            if plain is not m:
                _set_child(model, name, plain)
    log.info("densify: %d sparse modules -> plain", len(done))
    return model


def sparse_layers(model: nn.Module) -> dict[str, SparseProduct]:
    """Every sparse-capable module (SparseLinear, converted Conv1D, ...) of `model` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseProduct)}


def refresh(model: nn.Module) -> None:
    """Forget the cached formats of every sparse module (after writing weights through .data)."""
    for m in sparse_layers(model).values():
        m.refresh()

