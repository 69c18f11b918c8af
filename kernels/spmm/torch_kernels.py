"""Sparse products in plain torch (any device; the CPU's sparse paths), reading a SparseWeight.

- "csr": torch.sparse CSR matmul, Y = X (W^T)_csr and dX = dY W_csr; contiguous row-major outputs.
- "coo": gather the input columns each non-zero reads and index_add the products into the output
  (nnz x rows temporaries, bounded by chunking over rows).
- the dW of a support (launch.sdd chooses): `sdd_gemm`, one dense GEMM and a gather (the BLAS, or cuBLAS,
  wins while the entries are many), and `sdd_gather`, gathered products summed in row chunks.
Each product function is `(a, sw, vals, bias) -> out` with `vals` the weight's non-zeros in CSR order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sparse_format import SparseWeight
from .reference import sdd_ref

_CHUNK = 1 << 24          # max gathered elements per chunk of the "coo" product and of sdd_gather


def csr_fwd(a: Tensor, sw: SparseWeight, vals: Tensor, bias: Tensor | None) -> Tensor:
    """Y [M, N] = a [M, K] W^T (+ bias) through torch.sparse CSR of W^T."""
    n, k = sw.shape
    s = torch.sparse_csr_tensor(sw.t_ptr.long(), sw.t_row32.long(), vals[sw.t_perm].to(a.dtype), (k, n),
                                check_invariants=False)
    return a @ s if bias is None else torch.addmm(bias.to(a.dtype), a, s)


def csr_dx(a: Tensor, sw: SparseWeight, vals: Tensor, bias: Tensor | None = None) -> Tensor:
    """dX [M, K] = a [M, N] W through torch.sparse CSR of W."""
    n, k = sw.shape
    s = torch.sparse_csr_tensor(sw.row_ptr.long(), sw.col, vals.to(a.dtype), (n, k), check_invariants=False)
    return a @ s


def coo_fwd(a: Tensor, sw: SparseWeight, vals: Tensor, bias: Tensor | None) -> Tensor:
    """Y [M, N] = a [M, K] W^T (+ bias): out[:, row] += a[:, col] * val."""
    return _gather_add(a, sw.col, sw.row, sw.shape[0], vals, bias)


def coo_dx(a: Tensor, sw: SparseWeight, vals: Tensor, bias: Tensor | None = None) -> Tensor:
    """dX [M, K] = a [M, N] W: out[:, col] += a[:, row] * val."""
    return _gather_add(a, sw.row, sw.col, sw.shape[1], vals, None)


def _gather_add(a: Tensor, src: Tensor, dst: Tensor, width: int, vals: Tensor, bias: Tensor | None) -> Tensor:
    vals = vals.to(a.dtype)
    if bias is None:
        out = torch.zeros(a.shape[0], width, dtype=a.dtype, device=a.device)
    else:
        out = bias.to(a.dtype).expand(a.shape[0], width).clone(memory_format=torch.contiguous_format)
    step = max(1, _CHUNK // max(vals.numel(), 1))
    for m0 in range(0, a.shape[0], step):
        out[m0:m0 + step].index_add_(1, dst, a[m0:m0 + step, src] * vals)
    return out


def sdd_gemm(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """(dy^T x) at the entries (rows[z], cols[z]), fp32 [Z], by the dense product and a gather."""
    return (dy.t() @ x.to(dy.dtype))[rows, cols].float()


def sdd_gather(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """(dy^T x) at the entries (rows[z], cols[z]), fp32 [Z], by gathered products summed in row chunks."""
    z = rows.numel()
    out = torch.zeros(z, dtype=torch.float32, device=dy.device)
    step = max(1, _CHUNK // max(z, 1))
    for m0 in range(0, dy.shape[0], step):
        out += sdd_ref(dy[m0:m0 + step], x[m0:m0 + step], rows, cols)
    return out
