"""The registry of sparse matmul methods: one `Method` entry per way of computing a linear layer's products.

A method computes the forward Y = A W^T (+ bias) [M, N] and the input gradient dX = dY W [M, K] of a weight
W [N, K] stored dense-shaped with zeros (reference.py is the ground truth). An entry names:
- the kernels (`fwd(a, w, sw, bias)`, `dx(a, w, sw)`; `sw` is the SparseWeight, None for "dense");
- the format it reads (`fmt`: None, "csr", "ell", "tiles"; sparse_format.py builds each) and whether that
  format can hold this weight (`fits`, else the planner uses `fallback`);
- the activation layout it wants (`tokens_major`: A with stride(0) == 1, copied once by the autograd
  Function so that dW reuses the copy);
- its rule tier: the dispatcher picks it automatically at or below `max_density` (the sparsest matching
  tier wins; None: only when forced by name), for activation dtypes in `dtypes`; `max_occupancy` adds a
  tile-occupancy condition. Tiers come from measurements: see docs/sparse-matmul.md for the numbers.
Adding a method is one entry here plus one test row in tests/kernels/test_spmm.py (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from . import torch_kernels as tk
from .reference import dds_ref

__all__ = ["METHODS", "Method", "TILE", "get", "names"]

TILE = 32                 # tile size of the "tiles" method (random top-k masks leave no empty 16x16 tile)
_SPARSE_TORCH = (torch.float32, torch.float64)          # torch.sparse / index_add paths
_TRITON = (torch.float32, torch.float16, torch.bfloat16)
_ANY = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Method:
    """One sparse matmul method (see the module docstring for each field's meaning)."""
    name: str
    backends: tuple[str, ...]                  # "torch" (any device) and/or "triton"
    fwd: Callable[..., Tensor]                 # (a [M, K], w [N, K], sw, bias [N] | None) -> [M, N]
    dx: Callable[..., Tensor]                  # (a [M, N], w [N, K], sw) -> [M, K]
    fmt: str | None = None                     # None | "csr" | "ell" | "tiles"
    tokens_major: bool = False
    dtypes: tuple[torch.dtype, ...] = _ANY
    max_density: float | None = None           # rule tier (None: never auto-chosen)
    max_occupancy: float | None = None         # ... and at most this TILE-occupancy
    fits: Callable[[SparseWeight, bool], bool] | None = None   # (sw, transposed) -> the format holds it
    fallback: str = "dense"                    # used by the planner where `fits` says no

    @property
    def jit(self) -> bool:
        """Compiled at first use (Triton): a failure there makes the launcher fall back to masked dense."""
        return self.backends == ("triton",)

    def prepare(self, sw: SparseWeight, transposed: bool) -> None:
        """Build the parts of the format this method reads for one product, ahead of the product."""
        if self.fmt == "ell":
            sw.ell(transposed)
        elif self.fmt == "tiles":
            sw.tile_map(TILE)


def _triton():
    from . import triton_kernels    # imported on first use: importing triton is slow and optional
    return triton_kernels


def _vals(sw: SparseWeight, w: Tensor) -> Tensor:
    return sw.values(w)


# ---------------------------------------------------------------- the kernels of each method, uniform signature

def _dense_fwd(a, w, sw, bias):
    return dds_ref(a, w, "fwd", bias)


def _dense_dx(a, w, sw):
    return dds_ref(a, w, "dx")


def _csr_fwd(a, w, sw, bias):
    return tk.csr_fwd(a, sw, _vals(sw, w), bias)


def _csr_dx(a, w, sw):
    return tk.csr_dx(a, sw, _vals(sw, w))


def _coo_fwd(a, w, sw, bias):
    return tk.coo_fwd(a, sw, _vals(sw, w), bias)


def _coo_dx(a, w, sw):
    return tk.coo_dx(a, sw, _vals(sw, w))


def _gather_fwd(a, w, sw, bias):
    return _triton().spmm_gather_triton(a, sw.row_ptr, sw.row32, sw.col32, _vals(sw, w), sw.shape[0], bias=bias)


def _gather_dx(a, w, sw):
    return _triton().spmm_gather_triton(a, sw.t_ptr, sw.t_col32, sw.t_row32, _vals(sw, w)[sw.t_perm], sw.shape[1])


def _ell_fwd(a, w, sw, bias):
    e = sw.ell(transposed=False)
    return _triton().spmm_ell_triton(a, e.col, e.values(_vals(sw, w)), e.row_len, bias=bias)


def _ell_dx(a, w, sw):
    e = sw.ell(transposed=True)
    return _triton().spmm_ell_triton(a, e.col, e.values(_vals(sw, w)), e.row_len)


def _tiles_fwd(a, w, sw, bias):
    tm = sw.tile_map(TILE)
    return _triton().spmm_tiles_triton(a, w.t(), tm.ptr, tm.idx, tm.tile, bias=bias)


def _tiles_dx(a, w, sw):
    tm = sw.tile_map(TILE)
    return _triton().spmm_tiles_triton(a, w, tm.t_ptr, tm.t_idx, tm.tile)


def _ell_fits(sw: SparseWeight, transposed: bool) -> bool:
    return sw.ell_fits(transposed)


# ---------------------------------------------------------------- the registry

METHODS: dict[str, Method] = {m.name: m for m in (
    # masked dense: F.linear / matmul on the dense-with-zeros weight (cuBLAS on a GPU); every backend has it
    Method("dense", ("torch", "triton"), _dense_fwd, _dense_dx),
    # CPU, bench/results/spmm_cpu.md (2 cores, T=2048): torch.sparse CSR beats the BLAS from ~1/32..1/64 down,
    # but its products give different bits at 1 and 2 threads (bench/results/determinism/), so it has no tier:
    # the training step must give the same bytes at any thread count (docs/reproducibility.md); forcing it works
    Method("csr", ("torch",), _csr_fwd, _csr_dx, fmt="csr", dtypes=_SPARSE_TORCH),
    # the gather + index_add path (the same bytes at any thread count) beats the BLAS at 1/256 and below
    Method("coo", ("torch",), _coo_fwd, _coo_dx, fmt="csr", dtypes=_SPARSE_TORCH, max_density=1 / 256),
    # GPU (H200, bench/results/gpu/): none of these beat cuBLAS on the masked weight, so no tier is set;
    # the CSR gather kernel on row-major activations ...
    Method("gather", ("triton",), _gather_fwd, _gather_dx, fmt="csr", dtypes=_TRITON),
    # ... and on a tokens-contiguous copy (coalesced gathers)
    Method("gather_t", ("triton",), _gather_fwd, _gather_dx, fmt="csr", tokens_major=True, dtypes=_TRITON),
    # padded rows, FMAs on CUDA cores: 1.75-1.9x cuBLAS where outputs are 4x the inputs at 1/1024, slower
    # elsewhere; the candidate tier once it wins both orientations is 1/256
    Method("ell", ("triton",), _ell_fwd, _ell_dx, fmt="ell", tokens_major=True, dtypes=_TRITON,
           fits=_ell_fits),
    # skips empty TILE x TILE tiles, tensor cores on the rest (pays only for clustered supports)
    Method("tiles", ("triton",), _tiles_fwd, _tiles_dx, fmt="tiles", dtypes=_TRITON),
)}


def names(backend: str) -> tuple[str, ...]:
    """The methods a backend has, in registry order ("cuda" has the Triton ones)."""
    backend = "triton" if backend == "cuda" else backend
    return tuple(n for n, m in METHODS.items() if backend in m.backends)


def get(name: str, backend: str | None = None) -> Method:
    """The entry of `name`; ValueError naming the choices when it is unknown (or not on `backend`)."""
    allowed = names(backend) if backend is not None else tuple(METHODS)
    if name not in allowed:
        where = f" (backend {backend!r})" if backend is not None else ""
        raise ValueError(f"sparse matmul: method {name!r} is not one of {allowed}{where}")
    return METHODS[name]
