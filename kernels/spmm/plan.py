"""The planner: which method runs the forward and dX products of one weight, and the format they read.

`plan_linear(w, ...)` resolves the backend (dispatch.resolve), picks the methods from the weight's density
and tile occupancy (rules.py over the registry in methods.py) and builds the SparseWeight they need
(sparse_format.py; a method whose format cannot hold this weight, such as "ell" on very skewed rows, is
replaced by its `fallback` unless forced). A caller may reuse a plan while the weight's support is
unchanged. The density is measured (one pass over W and, on a GPU, a host sync) unless the caller knows
it (`density=`, e.g. k / numel of a layer kept at exactly k), and not at all when the backend's rule picks
masked dense at every density (the GPU today): then a plan costs no pass and no sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..dispatch import resolve
from ..sparse_format import SparseWeight, compact
from . import methods, rules

__all__ = ["LinearPlan", "choose_method", "plan_linear"]


@dataclass
class LinearPlan:
    """Resolved backend, the methods of the forward and dX products, and the format they read."""
    backend: str
    fwd: str
    dx: str
    sw: SparseWeight | None
    density: float | None         # None: not measured (the backend's rule is dense at every density)
    forced: bool = False          # methods named by the caller: never replaced by the fallback


def plan_linear(w: Tensor, *, dtype: torch.dtype | None = None, backend: str | None = None,
                method: str | None = None, sw: SparseWeight | None = None,
                density: float | None = None) -> LinearPlan:
    """Plan the products of weight `w` [N, K] (see the module docstring). `method` (or
    SPARSEFORMER_SPMM_METHOD) forces both products' method; `dtype` is the compute dtype (default: w's);
    `density`, when known, replaces the measurement."""
    kind = resolve("spmm", w.device, backend, has_cuda_op=False)
    dtype = dtype or w.dtype
    forced = method or rules.forced_method()
    if forced is not None and methods.get(forced, kind).fmt is not None:
        sw = sw if sw is not None else compact(w)
    if forced is None and sw is None and rules.sparsest_dense_density(kind) < 0:
        return LinearPlan(backend=kind, fwd="dense", dx="dense", sw=None, density=density)
    if density is None:
        density = sw.density if sw is not None else _density(w)
    if forced is not None:
        fwd = dx = forced
    else:
        occ = None
        if rules.needs_occupancy(kind, density):
            sw = sw if sw is not None else compact(w)
            occ = lambda t: sw.tile_map(t).occupancy   # noqa: E731
        fwd = dx = rules.choose(kind, density, dtype, occ)
    m = methods.get(fwd)
    if sw is None and m.fmt is not None:
        sw = compact(w)
    if forced is None and m.fits is not None:
        fwd = fwd if m.fits(sw, False) else m.fallback
        dx = dx if m.fits(sw, True) else m.fallback
    if sw is not None:
        for name, transposed in ((fwd, False), (dx, True)):
            methods.get(name).prepare(sw, transposed)      # build now, not inside the first product
    return LinearPlan(backend=kind, fwd=fwd, dx=dx, sw=sw, density=density, forced=forced is not None)


def choose_method(device: torch.device, dtype: torch.dtype, density: float | None, *, backend: str | None = None,
                  method: str | None = None) -> str:
    """The method `plan_linear` would pick for one weight of a known density, without reading the weight:
    no format is built, so a tile-occupancy tier is not taken and a format that cannot hold the weight is
    left to the product to refuse (ops.py). An unknown density (None) means masked dense."""
    kind = resolve("spmm", device, backend, has_cuda_op=False)
    forced = method or rules.forced_method()
    if forced is not None:
        return methods.get(forced, kind).name
    return "dense" if density is None else rules.choose(kind, density, dtype)


def _density(w: Tensor) -> float:
    return int(torch.count_nonzero(w)) / w.numel() if w.numel() else 1.0
