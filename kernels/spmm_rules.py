"""Which method runs a sparse product, from the weight's measured density and tile occupancy.

Methods per backend:
- "torch" (any device; the CPU path): "dense" = F.linear / matmul on the dense-with-zeros weight (the
  masked-dense reference), "csr" = torch.sparse CSR matmul, "coo" = gather the used input columns and
  index_add them into the output (nnz x tokens memory).
- "triton" (CUDA): "dense" = cuBLAS on the masked weight, "gather" = the CSR gather kernel on row-major
  activations, "gather_t" = the same kernel on a tokens-contiguous copy of the activations (one extra
  copy, coalesced gathers), "ell" = the padded-rows (ELL) FMA kernel on that copy (no tensor cores; the
  planner uses ELL_FALLBACK for a product whose rows are too skewed to pad, sparse_format.ell_fits),
  "tiles" = the tile-skipping tensor-core kernel.

Where the thresholds come from:
- CPU: bench/bench_spmm.py on the 2-core development machine at the tiny preset's shapes
  (bench/results/spmm_cpu.md).
- GPU: bench/results/gpu/H200_2026-11-26_* (bench_spmm, bf16, T=16384 and 65536, d_model 768 and 2048).
  There "gather", "gather_t" and "tiles" reached 1-13 % of the roofline ideal and never beat masked dense
  (cuBLAS on the masked weight): the closest, gather_t at 1/1024 with d_model 2048 in the products with
  8192 outputs, was 1-8 % slower than masked; it was about 2x slower at d_model 768 and 2-3x at 1/256.
  So GPU_RULE is masked dense everywhere (GPU_RULE_MEASURED) until a GPU run shows a method that wins.
  GPU_RULE_ELL is the rule to switch to once bench_spmm's `ours:ell` column beats `masked` (see its
  comment for what must be measured).
`SPARSEFORMER_SPMM_METHOD` (one method name) forces a method for every product, for benchmarks and tests;
a forced method the backend lacks raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

METHODS = {"torch": ("dense", "csr", "coo"), "triton": ("dense", "gather", "gather_t", "ell", "tiles")}
ELL_FALLBACK = "dense"         # rows too uneven to pad: masked dense (gather_t measured 0.2-0.5x of it)
SPARSE_TORCH_DTYPES = (torch.float32, torch.float64)   # torch.sparse / index_add paths; others run dense


@dataclass(frozen=True)
class Rule:
    """Method tiers of one backend: the sparsest tier whose `max_density` the weight is at or below wins;
    above every tier, masked dense. Triton also tries "tiles" when the occupancy of `tile` x `tile` tiles is
    at most `tiles_max_occupancy` (and the density at most `tiles_max_density`)."""
    tiers: tuple[tuple[float, str], ...]      # (max_density, method), densest first
    tile: int = 32
    tiles_max_occupancy: float = 0.0
    tiles_max_density: float = 0.0


# CPU: bench/bench_spmm.py --device cpu --threads 1 at T=2048, K/N in {128, 512} (bench/results/spmm_cpu.md):
# torch.sparse CSR beats the dense BLAS from about 1/32..1/64 down, the gather + index_add "coo" path from
# about 1/512 down; at 1/16 and above dense wins or ties.
CPU_RULE = Rule(tiers=((1 / 40, "csr"), (1 / 512, "coo")))
# GPU, measured (bench/results/gpu/H200_2026-11-26_*): every sparse kernel lost to masked dense, so dense at
# every density. (The earlier estimate, gather_t at <= 1/256 and tiles at occupancy <= 0.3, ran 2-8x slower
# than cuBLAS there.)
GPU_RULE_MEASURED = Rule(tiers=())
# GPU, candidate: the ELL kernel at <= 1/256. Switch GPU_RULE to this only after a GPU bench_spmm run shows
# `ours:ell` faster than `masked` for fwd AND dX at d_model 768 and 2048 (T >= 16384, bf16) at every density
# in its tiers; move the 1/256 bound to the densest density where it still wins (1/1024 only, if that is all).
GPU_RULE_ELL = Rule(tiers=((1 / 256, "ell"),))
GPU_RULE = GPU_RULE_MEASURED


def forced_method() -> str | None:
    """The method named by SPARSEFORMER_SPMM_METHOD, or None."""
    return os.environ.get("SPARSEFORMER_SPMM_METHOD") or None


def check_method(method: str, backend: str) -> str:
    """Return `method` when the backend has it, else raise ValueError naming the choices."""
    allowed = METHODS["triton" if backend == "cuda" else backend]
    if method not in allowed:
        raise ValueError(f"sparse matmul: method {method!r} is not one of {allowed} (backend {backend!r})")
    return method


def choose(backend: str, density: float, dtype: torch.dtype, occupancy=None) -> str:
    """The method for a product with a weight of this density; `occupancy(tile)` is called only if needed."""
    if backend == "torch":
        rule, ok = CPU_RULE, dtype in SPARSE_TORCH_DTYPES
    else:
        rule, ok = GPU_RULE, dtype in (torch.float32, torch.float16, torch.bfloat16)
    if not ok:
        return "dense"
    if (occupancy is not None and rule.tiles_max_occupancy > 0 and density <= rule.tiles_max_density
            and occupancy(rule.tile) <= rule.tiles_max_occupancy):
        return "tiles"                      # mostly empty tiles: clustered support, tensor cores win
    method = "dense"
    for max_density, name in rule.tiers:
        if density <= max_density:
            method = name
    return method


def sparsest_dense_density(backend: str) -> float:
    """Above this density the rule always picks masked dense (no format needed to decide)."""
    rule = CPU_RULE if backend == "torch" else GPU_RULE
    tiles = [rule.tiles_max_density] if rule.tiles_max_occupancy > 0 else []
    return max([d for d, _ in rule.tiers] + tiles, default=-1.0)


def needs_format(method: str) -> bool:
    return method != "dense"
