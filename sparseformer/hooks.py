"""Named hook points: record or replace any activation of the model by its name (the names of the paper's
released code, listed in docs/method.md, "Hook names").

Each site is a `HookPoint` (an identity module) that the model calls on the tensor flowing past it.
Hooks are temporary and only installed through the context managers below, which remove them in `finally`:
hooks are global state on the model, and a leaked hook silently changes every later forward.

    with record(model, ["0.attn.q", "final_resid"]) as rec:
        model(idx)
    rec["0.attn.q"]                     # detached tensor

    with replace(model, {"0.mlp.post_act": lambda x, name: x * 0}):
        logits = model(idx)             # that site zero-ablated

A hook is `fn(tensor, name) -> Tensor | None`: return None to watch, a tensor to replace the activation.
`names` may be one name, a list of names, a compiled regex, or a predicate `name -> bool`; an unknown exact
name raises ValueError with the closest valid names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

HookFn = Callable[[Tensor, str], "Tensor | None"]


class HookPoint(nn.Module):
    """Identity at one named site; runs the hooks installed on it, in order."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name
        self.fns: list[HookFn] = []

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fns:
            out = fn(x, self.name)
            if out is not None:
                x = out
        return x

    def extra_repr(self) -> str:
        return repr(self.name)


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every HookPoint of `model` by its site name, in forward (registration) order."""
    return {m.name: m for m in model.modules() if isinstance(m, HookPoint)}


def select(model: nn.Module, names) -> list[str]:
    """Resolve a name spec (str, list, regex, predicate, or None for all) to site names in forward order."""
    points = hook_points(model)
    if names is None:
        return list(points)
    if isinstance(names, re.Pattern):
        return [n for n in points if names.fullmatch(n)]
    if callable(names):
        return [n for n in points if names(n)]
    wanted = [names] if isinstance(names, str) else list(names)
    for n in wanted:
        if n not in points:
            hint = difflib.get_close_matches(n, list(points), n=3)
            raise ValueError(f"unknown hook point {n!r}" + (f"; did you mean {', '.join(hint)}?" if hint else ""))
    order = {n: i for i, n in enumerate(points)}
    return sorted(set(wanted), key=order.__getitem__)


@contextmanager
def _installed(model: nn.Module, fns: dict[str, HookFn]) -> Iterator[None]:
    points = hook_points(model)
    added: list[tuple[HookPoint, HookFn]] = []
    try:
        for name, fn in fns.items():
            points[name].fns.append(fn)
            added.append((points[name], fn))
        yield
    finally:
        for point, fn in added:
            point.fns.remove(fn)


@contextmanager
def record(model: nn.Module, names=None, *, grads: bool = False) -> Iterator[dict[str, Tensor]]:
    """Record activations at the selected sites into a dict (detached); with grads=True also store
    the gradient flowing back into each site as `name + ".grad"` (after a backward pass)."""
    store: dict[str, Tensor] = {}

    def make(name: str) -> HookFn:
        def fn(x: Tensor, _name: str) -> None:
            store[name] = x.detach()
            if grads and x.requires_grad:
                x.register_hook(lambda g: store.__setitem__(name + ".grad", g.detach()))
            return None
        return fn

    with _installed(model, {n: make(n) for n in select(model, names)}):
        yield store


@contextmanager
def replace(model: nn.Module, interventions: dict[str, HookFn]) -> Iterator[None]:
    """Install `fn(x, name) -> Tensor | None` at each named site for the duration of the block."""
    select(model, list(interventions))  # validates names
    with _installed(model, dict(interventions)):
        yield


def ablate(value: Tensor | float) -> HookFn:
    """An intervention that replaces a site's activation by `value` (broadcast), e.g. a mean or 0."""
    def fn(x: Tensor, _name: str) -> Tensor:
        return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand_as(x)
    return fn
