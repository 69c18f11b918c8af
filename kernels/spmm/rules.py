"""Which method runs a product: the sparsest registry tier (methods.py) that the weight's density reaches.

For a backend, the candidates are its methods with a `max_density` tier and the activation dtype in their
`dtypes`; the one with the smallest tier at or above the density wins, a `max_occupancy` method also needs
its tile occupancy at most that bound, and above every tier the product runs masked dense. The tiers are
measured (docs/sparse-matmul.md): on the CPU the gather path at 1/256 and below (torch.sparse CSR, faster
at 1/256 in bench/results/spmm_cpu.md, has no tier: its results depend on the thread count,
docs/reproducibility.md); on a GPU no tier, because no kernel beat cuBLAS on the masked weight across the board.
`SPARSEFORMER_SPMM_METHOD` (one method name) forces a method for every product, for benchmarks and tests;
a forced method the backend lacks raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import methods

__all__ = ["check_method", "choose", "forced_method", "sparsest_dense_density", "tiers"]


def forced_method() -> str | None:
    """The method named by SPARSEFORMER_SPMM_METHOD, or None."""
    return os.environ.get("SPARSEFORMER_SPMM_METHOD") or None


def check_method(method: str, backend: str) -> str:
    """Return `method` when the backend has it, else raise ValueError naming the choices."""
    return methods.get(method, backend).name


def tiers(backend: str) -> list[methods.Method]:
    """The auto-chosen methods of a backend, densest tier first."""
    mine = [methods.METHODS[n] for n in methods.names(backend)]
    return sorted((m for m in mine if m.max_density is not None), key=lambda m: -m.max_density)


def choose(backend: str, density: float, dtype: torch.dtype,
           occupancy: Callable[[int], float] | None = None) -> str:
    """The method for a product with a weight of this density; `occupancy(tile)` is called only if needed."""
    chosen = "dense"
    for m in tiers(backend):
        if density > m.max_density or dtype not in m.dtypes:
            continue
        if m.max_occupancy is not None and (occupancy is None or occupancy(methods.TILE) > m.max_occupancy):
            continue
        chosen = m.name                     # tiers run densest first: the last match is the sparsest
    return chosen


def sparsest_dense_density(backend: str) -> float:
    """Above this density the rule always picks masked dense (-1 when it does at every density)."""
    return max((m.max_density for m in tiers(backend)), default=-1.0)


def needs_occupancy(backend: str, density: float) -> bool:
    """Whether choosing for this density asks for the tile occupancy (it costs a format build)."""
    return any(m.max_occupancy is not None and density <= m.max_density for m in tiers(backend))
