"""The emit step: the sparse formats of many projected weights at once, for the products of the next step.

After a top-k projection every weight holds at most its k non-zeros, so every size of its format (nnz,
pointer lengths) has a bound known on the host before anything runs: `emit_formats(weights, caps)` writes
all weights' formats into buffers preallocated from the caps, with a fixed number of launches for any
number of weights and one device-to-host copy (the counts and longest rows, which ELL needs), instead of
one `compact()` per weight (a dozen launches and several host syncs each). Each SparseWeight it returns
equals `compact(w)` (sparse_format.py is the reference), padded rows (ELL) included where asked for.

Two halves: the positions of the non-zeros (one read of the weights; on a device one pair of launches
per dtype, triton_kernels.py; on the torch backend `nonzero` per weight), then build.py turns the
positions of all weights into CSR, the transposed index and ELL together. Backends as elsewhere
(dispatch.py): "torch" on the CPU, "triton" on CUDA (a forced "cuda" runs the Triton kernels).
docs/sparse-matmul.md says who calls it (SparseAdamW, for the layers whose planned method reads a format).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..dispatch import resolve
from ..sparse_format import SparseWeight
from .build import build_formats

__all__ = ["emit_formats"]


def emit_formats(weights: Sequence[Tensor], caps: Sequence[int], *, ell: Sequence[Sequence[bool]] | None = None,
                 backend: str | None = None) -> list[SparseWeight]:
    """The SparseWeight of each 2-D weight (any strides, one device), which holds at most caps[i]
    non-zeros (ValueError otherwise). `ell[i]` lists the padded rows to build with it: False for W (the
    forward), True for W^T (dX); built where they fit (SparseWeight.ell_fits), else left to build on demand."""
    weights = list(weights)
    if len(caps) != len(weights) or (ell is not None and len(ell) != len(weights)):
        raise ValueError(f"emit_formats: {len(weights)} weights but {len(caps)} caps"
                         + (f" and {len(ell)} ell requests" if ell is not None else ""))
    for i, w in enumerate(weights):
        if w.ndim != 2:
            raise ValueError(f"emit_formats: weight {i} has shape {tuple(w.shape)}; want a 2-D weight [N, K]")
    if not weights:
        return []
    dev = weights[0].device
    if any(w.device != dev for w in weights):
        raise ValueError("emit_formats: every weight of one call must be on one device")
    caps = [max(0, min(int(c), w.numel())) for c, w in zip(caps, weights)]
    starts = [sum(caps[:i]) for i in range(len(caps))]
    kind = resolve("emit_formats", dev, backend, has_cuda_op=False)
    with torch.profiler.record_function("sparseformer::emit_formats"):      # bench/profile_step.py finds it
        pos = torch.zeros(sum(caps), dtype=torch.long, device=dev)
        nnz = torch.zeros(len(weights), dtype=torch.long, device=dev)
        if kind == "torch":
            transposed = [False] * len(weights)
            _positions_torch(weights, starts, caps, pos, nnz)
        else:
            transposed = _positions_device(weights, starts, caps, pos, nnz)
        return build_formats([tuple(w.shape) for w in weights], transposed, caps, pos, nnz,
                             [tuple(e) for e in ell] if ell is not None else None)


def _positions_torch(weights: list[Tensor], starts: list[int], caps: list[int], pos: Tensor, nnz: Tensor) -> None:
    """Row-major flat indices of each weight's non-zeros (at most its cap of them) and their counts."""
    for i, w in enumerate(weights):
        flat = (w.detach() != 0).reshape(-1).nonzero().squeeze(1)
        n = min(flat.numel(), caps[i])
        pos[starts[i]:starts[i] + n] = flat[:n]
        nnz[i] = flat.numel()


def _positions_device(weights: list[Tensor], starts: list[int], caps: list[int], pos: Tensor, nnz: Tensor
                      ) -> list[bool]:
    """Storage positions through the Triton kernels, one dtype group at a time; whether each weight's
    storage is W^T (a transposed view, whose positions then come in CSC order)."""
    from ..topk.tables import build_group
    from .triton_kernels import BLOCK, positions_triton
    by_dtype: dict = {}
    for i, w in enumerate(weights):
        by_dtype.setdefault(w.dtype, []).append(i)
    transposed = [False] * len(weights)
    for idx in by_dtype.values():
        g, _ = build_group([weights[i].detach() for i in idx], [None] * len(idx), BLOCK, False)
        whole = len(idx) == len(weights)                 # one dtype: the group is every weight, in order
        part = nnz if whole else torch.zeros(len(idx), dtype=torch.long, device=pos.device)
        positions_triton(g, [starts[i] for i in idx], [caps[i] for i in idx], pos, part)
        if not whole:
            nnz[torch.tensor(idx, device=pos.device)] = part
        for i, tr in zip(idx, g.transposed):
            transposed[i] = tr
    return transposed
