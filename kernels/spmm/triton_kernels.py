"""Triton kernels for products with a sparse weight: Y = A S^T (gather and tile-skipping) and the SDDMM.

Semantics (each must match the dense reference in reference.py up to float rounding; fp32 accumulation):
- `spmm_gather_triton(a, ptr, rows, idx, vals, P)`: Y[M, P] = A[M, Q] @ S^T for S [P, Q] given as CSR
  (ptr [P+1]; per entry its row, its column idx and its value). The forward passes S = W (the CSR of the
  format), dX passes S = W^T (its transposed index). A may have any strides: a tokens-contiguous A (A^T
  stored row-major, stride_am == 1) makes each gathered column one coalesced load, the fast layout.
  Each program owns BLOCK_M tokens x BLOCK_P outputs; the entries of its rows are contiguous in the CSR,
  so it walks them in chunks of BLOCK_Z with no padding (heavy rows cost only their own entries), gathers
  the A columns they read, and adds the products into their rows with a one-hot [BLOCK_Z, BLOCK_P] matrix
  on the tensor cores (at 16-bit inputs the weight values are rounded to the input dtype, as autocast
  rounds the dense weight).
- `spmm_ell_triton(a, col, val, row_len)`: the same product Y[M, P] = A[M, Q] @ S^T with S in padded rows
  (ELL, slot-major: col/val [L, P], row_len [P]; see sparse_format.Ell). Each program owns BLOCK_P rows x
  BLOCK_M tokens and walks slots 0..max(row_len of its rows)-1: per slot one contiguous load of the BLOCK_P
  columns and values, a [BLOCK_P, BLOCK_M] gather of A (each row of it is BLOCK_M contiguous elements when
  A is tokens-contiguous), and FMAs into an fp32 [BLOCK_P, BLOCK_M] register tile; no tensor cores, no
  one-hot. 16-bit A: values rounded to A's dtype first (as the gather kernel). A may have any strides.
- `spmm_tiles_triton(a, b, ptr, idx, tile, P)`: Y[M, P] = A[M, Q] @ B[Q, P] where B is a strided view of
  the dense-with-zeros weight and (ptr, idx) list, per tile of P, the tiles of Q that hold a non-zero;
  empty tiles are skipped, the others run on tensor cores (tl.dot). fp32 inputs use IEEE fp32 dots.
- `sddmm_triton(dy, x, rows, cols)`: out[z] = sum_m dy[m, rows[z]] * x[m, cols[z]] (fp32), the dW of a
  support; M is split over programs and the partial sums are added in a fixed order (deterministic).
Accepted dtypes of A/dy/x: float32, float16, bfloat16 (bf16 dots are wrong under TRITON_INTERPRET, so
bf16 is tested on GPUs only). Not supported: float64 (use the torch path). Every launcher returns
fresh tensors; none of them modifies its inputs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._env import INTERPRET

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _keep(configs: list) -> list:
    """Autotune configs; only the first under the interpreter (several fail there without a GPU)."""
    return configs[:1] if INTERPRET else configs


def _gather_configs() -> list:
    out = [triton.Config({"BLOCK_M": bm, "BLOCK_P": bp, "BLOCK_Z": bz}, num_warps=w, num_stages=st)
           for bm, bp, bz, w, st in ((128, 64, 64, 4, 2), (64, 64, 64, 4, 2), (128, 128, 64, 8, 2))]
    if INTERPRET:   # the interpreter runs every program in Python: small blocks keep tests fast
        out = [triton.Config({"BLOCK_M": 16, "BLOCK_P": 16, "BLOCK_Z": 16}, num_warps=4, num_stages=1)]
    return _keep(out)


@triton.autotune(configs=_gather_configs(), key=["P", "Q", "A_T"])
@triton.jit
def _spmm_gather_kernel(
    a_ptr, ptr_ptr, row_ptr, idx_ptr, val_ptr, bias_ptr, y_ptr,  # A [M, Q]; S [P, Q] as CSR: ptr [P+1],
    M, P, Q,                                           # row/idx/val [nnz]; bias [P]; Y [M, P]
    stride_am, stride_aq, stride_ym, stride_yp,
    A_T: tl.constexpr,                                 # A is tokens-contiguous (an autotune key only)
    IEEE: tl.constexpr,                                # fp32 inputs: IEEE fp32 dots
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_P >= 16)
    tl.static_assert(BLOCK_Z >= 16)
    pid = tl.program_id(0)
    n_pb = tl.cdiv(P, BLOCK_P)
    pid_p = pid % n_pb                             # P-blocks vary fastest: programs sharing A rows run together
    pid_m = pid // n_pb
    p0 = pid_p * BLOCK_P
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask_m = offs_m < M
    lo = tl.load(ptr_ptr + p0)                     # rows p0..p0+BLOCK_P own entries lo..hi (contiguous)
    hi = tl.load(ptr_ptr + tl.minimum(p0 + BLOCK_P, P))
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am              # [BLOCK_M, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for z0 in range(lo, hi, BLOCK_Z):
        offs_z = z0 + tl.arange(0, BLOCK_Z)
        live = offs_z < hi
        q = tl.load(idx_ptr + offs_z, mask=live, other=0)                  # [BLOCK_Z] column of each entry
        r = tl.load(row_ptr + offs_z, mask=live, other=0) - p0             # [BLOCK_Z] its row, block-local
        v = tl.load(val_ptr + offs_z, mask=live, other=0.0)                # [BLOCK_Z] fp32 (0 on dead lanes)
        g = tl.load(a_rows + q.to(tl.int64)[None, :] * stride_aq,
                    mask=mask_m[:, None] & live[None, :], other=0.0)      # [BLOCK_M, BLOCK_Z] gathered A
        # scatter-add the products into their rows with a one-hot matrix on the tensor cores:
        # acc[m, p] += sum_z g[m, z] * v[z] * (r[z] == p)
        onehot = tl.where(r[:, None] == tl.arange(0, BLOCK_P)[None, :], v[:, None], 0.0)   # [BLOCK_Z, BLOCK_P]
        if IEEE:
            acc = tl.dot(g, onehot, acc, input_precision="ieee")
        else:
            acc = tl.dot(g, onehot.to(g.dtype), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_p.to(tl.int64)[None, :] * stride_yp
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_p < P)[None, :])


def _ell_configs() -> list:
    out = [triton.Config({"BLOCK_M": bm, "BLOCK_P": bp}, num_warps=w, num_stages=1)
           for bm, bp, w in ((128, 32, 4), (64, 16, 4), (64, 32, 4), (128, 16, 4), (128, 32, 8), (128, 64, 8),
                             (256, 16, 8), (256, 32, 8), (256, 64, 8))]
    if INTERPRET:
        out = [triton.Config({"BLOCK_M": 16, "BLOCK_P": 16}, num_warps=4, num_stages=1)]
    return _keep(out)


@triton.autotune(configs=_ell_configs(), key=["P", "Q", "A_T"])
@triton.jit
def _spmm_ell_kernel(
    a_ptr, col_ptr, val_ptr, len_ptr, bias_ptr, y_ptr,   # A [M, Q]; S [P, Q] as ELL: col/val [L, P],
    M, P, Q,                                            # len [P]; bias [P]; Y [M, P]
    stride_am, stride_aq, stride_ym, stride_yp,
    A_T: tl.constexpr,                                  # A is tokens-contiguous (an autotune key only)
    ROUND: tl.constexpr,                                # 16-bit A: round the values to A's dtype
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    n_pb = tl.cdiv(P, BLOCK_P)
    pid_p = pid % n_pb                              # P-blocks vary fastest: programs sharing A tokens run together
    pid_m = pid // n_pb
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    mask_m = offs_m < M
    row_len = tl.load(len_ptr + offs_p, mask=mask_p, other=0)              # [BLOCK_P]
    jmax = tl.max(row_len, axis=0)
    a_cols = a_ptr + offs_m.to(tl.int64)[None, :] * stride_am                # [1, BLOCK_M]
    col_p = col_ptr + offs_p                        # slot 0 of the block's rows; advanced by P per slot
    val_p = val_ptr + offs_p
    acc = tl.zeros((BLOCK_P, BLOCK_M), dtype=tl.float32)
    for j in range(0, jmax):
        live = j < row_len                                                  # [BLOCK_P]
        q = tl.load(col_p, mask=live, other=0)                              # [BLOCK_P] column of slot j
        v = tl.load(val_p, mask=live, other=0.0)                            # [BLOCK_P] fp32
        if ROUND:
            v = v.to(a_ptr.dtype.element_ty).to(tl.float32)
        g = tl.load(a_cols + q.to(tl.int64)[:, None] * stride_aq,
                    mask=live[:, None] & mask_m[None, :], other=0.0)        # [BLOCK_P, BLOCK_M] gathered A
        acc += v[:, None] * g.to(tl.float32)
        col_p += P
        val_p += P
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + offs_m.to(tl.int64)[None, :] * stride_ym + offs_p.to(tl.int64)[:, None] * stride_yp
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_m[None, :])


def _tiles_configs() -> list:
    out = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
           for bm, w, s in ((128, 4, 3), (64, 4, 3), (256, 8, 3))]
    if INTERPRET:
        out = [triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=1)]
    return _keep(out)


@triton.autotune(configs=_tiles_configs(), key=["P", "Q", "TILE"])
@triton.jit
def _spmm_tiles_kernel(
    a_ptr, b_ptr, ptr_ptr, idx_ptr, bias_ptr, y_ptr,   # A [M, Q]; B [Q, P] strided view of W; tiles per
    M, P, Q,                                           # P-tile; bias [P]; Y [M, P]
    stride_am, stride_aq, stride_bq, stride_bp, stride_ym, stride_yp,
    TILE: tl.constexpr, IEEE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    tl.static_assert(TILE >= 16)
    tl.static_assert(BLOCK_M >= 16)
    pid = tl.program_id(0)
    n_pb = tl.cdiv(P, TILE)
    pid_p = pid % n_pb
    pid_m = pid // n_pb
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * TILE + tl.arange(0, TILE)
    offs_t = tl.arange(0, TILE)
    mask_m = offs_m < M
    mask_p = offs_p < P
    lo = tl.load(ptr_ptr + pid_p)
    hi = tl.load(ptr_ptr + pid_p + 1)
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am                # [BLOCK_M, 1]
    b_cols = b_ptr + offs_p.to(tl.int64)[None, :] * stride_bp                # [1, TILE]
    acc = tl.zeros((BLOCK_M, TILE), dtype=tl.float32)
    for i in range(lo, hi):
        offs_q = tl.load(idx_ptr + i).to(tl.int64) * TILE + offs_t          # [TILE] this non-empty Q-tile
        mask_q = offs_q < Q
        a = tl.load(a_rows + offs_q[None, :] * stride_aq, mask=mask_m[:, None] & mask_q[None, :], other=0.0)
        b = tl.load(b_cols + offs_q[:, None] * stride_bq, mask=mask_q[:, None] & mask_p[None, :], other=0.0)
        b = b.to(a.dtype)                                                   # fp32 master weight under autocast
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_p.to(tl.int64)[None, :] * stride_yp
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_p[None, :])


def _sddmm_configs() -> list:
    out = [triton.Config({"BLOCK_M": bm, "BLOCK_Z": bz}, num_warps=w, num_stages=1)
           for bm, bz, w in ((64, 64, 4), (128, 32, 4))]
    if INTERPRET:
        out = [triton.Config({"BLOCK_M": 16, "BLOCK_Z": 16}, num_warps=4, num_stages=1)]
    return _keep(out)


# Keyed on Z rounded up to a power of two: a support dW with candidates lists a different Z every step,
# and keying on Z itself would re-tune every step (seconds per step on an H200).
@triton.autotune(configs=_sddmm_configs(), key=["Z_BUCKET", "M_SPLIT"])
@triton.jit
def _sddmm_kernel(
    dy_ptr, x_ptr, row_ptr, col_ptr, out_ptr,     # dy [M, N]; x [M, K]; rows/cols [Z]; out [SPLITS, Z] fp32
    M, Z, M_SPLIT, Z_BUCKET,
    stride_dym, stride_dyn, stride_xm, stride_xk,
    BLOCK_M: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    pid_z = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_z = pid_z * BLOCK_Z + tl.arange(0, BLOCK_Z)
    mask_z = offs_z < Z
    r = tl.load(row_ptr + offs_z, mask=mask_z, other=0).to(tl.int64)
    c = tl.load(col_ptr + offs_z, mask=mask_z, other=0).to(tl.int64)
    m_lo = pid_s * M_SPLIT
    m_hi = tl.minimum(M, m_lo + M_SPLIT)
    acc = tl.zeros((BLOCK_M, BLOCK_Z), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask = (offs_m < m_hi)[:, None] & mask_z[None, :]
        rows_m = offs_m.to(tl.int64)[:, None]
        dy = tl.load(dy_ptr + rows_m * stride_dym + r[None, :] * stride_dyn, mask=mask, other=0.0)
        x = tl.load(x_ptr + rows_m * stride_xm + c[None, :] * stride_xk, mask=mask, other=0.0)
        acc += dy.to(tl.float32) * x.to(tl.float32)
    tl.store(out_ptr + pid_s * Z + offs_z, tl.sum(acc, axis=0), mask=mask_z)


def _launch(kernel, grid, *args, **kwargs) -> None:
    """Launch an autotuned kernel; with SPARSEFORMER_AUTOTUNE=0 run its first config without tuning (tests
    draw many shapes, and each new shape would be tuned anew)."""
    if os.environ.get("SPARSEFORMER_AUTOTUNE", "1") == "0":
        cfg = kernel.configs[0]
        kernel.fn[grid](*args, **kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        kernel[grid](*args, **kwargs)


def _check_a(op: str, a: Tensor) -> None:
    if a.ndim != 2 or a.dtype not in _DTYPES:
        raise ValueError(f"{op}: want a 2-D {_DTYPES} tensor, got {tuple(a.shape)} {a.dtype}")
    if a.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{op}: Triton runs CPU tensors only under TRITON_INTERPRET=1")


def _check_bias(op: str, bias: Tensor | None, P: int) -> Tensor | None:
    if bias is None:
        return None
    if bias.shape != (P,):
        raise ValueError(f"{op}: bias has shape {tuple(bias.shape)}, want ({P},)")
    return bias.contiguous()


def _output(op: str, a: Tensor, P: int, out_dtype, bias: Tensor | None,
            no_entries: bool) -> tuple[Tensor, Tensor | None, bool]:
    """Allocate Y [M, P] and check the bias; an empty product is filled here (zeros, plus the bias) and
    comes back with done=True."""
    M, Q = a.shape
    y = torch.empty((M, P), dtype=out_dtype or a.dtype, device=a.device)
    if M == 0 or P == 0:
        return y, None, True
    if no_entries or Q == 0:
        return (y.zero_() if bias is None else y.copy_(bias.expand_as(y))), None, True
    return y, _check_bias(op, bias, P), False


def spmm_gather_triton(a: Tensor, ptr: Tensor, rows: Tensor, idx: Tensor, vals: Tensor, P: int,
                       out_dtype: torch.dtype | None = None, bias: Tensor | None = None) -> Tensor:
    """Y[M, P] = A[M, Q] @ S^T (+ bias [P]) with S [P, Q] in CSR: ptr int32 [P+1]; rows, idx int32 [nnz] (row
    and column of each entry, CSR order); vals [nnz]."""
    _check_a("spmm_gather", a)
    M, Q = a.shape
    if ptr.shape != (P + 1,) or not (idx.numel() == vals.numel() == rows.numel()):
        raise ValueError(f"spmm_gather: ptr {tuple(ptr.shape)} / rows {rows.numel()} / idx {idx.numel()} / "
                         f"vals {vals.numel()} do not describe a CSR with {P} rows")
    y, bias, done = _output("spmm_gather", a, P, out_dtype, bias, no_entries=idx.numel() == 0)
    if done:
        return y
    vals = vals.to(torch.float32).contiguous()
    a_t = a.stride(0) == 1 and M > 1

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(M, meta["BLOCK_M"]),)

    _launch(_spmm_gather_kernel, grid, a, ptr.contiguous(), rows.contiguous(), idx.contiguous(), vals,
                              bias if bias is not None else vals, y, M, P, Q,
                              a.stride(0), a.stride(1), y.stride(0), y.stride(1), A_T=a_t,
                              IEEE=a.dtype == torch.float32, HAS_BIAS=bias is not None)
    return y


def spmm_ell_triton(a: Tensor, col: Tensor, val: Tensor, row_len: Tensor, out_dtype: torch.dtype | None = None,
                    bias: Tensor | None = None) -> Tensor:
    """Y[M, P] = A[M, Q] @ S^T (+ bias [P]) with S [P, Q] in slot-major ELL: col int32 [L, P], val [L, P]
    (padded slots: any col in range, val 0), row_len int32 [P]."""
    _check_a("spmm_ell", a)
    M, Q = a.shape
    P = row_len.numel()
    if row_len.shape != (P,) or col.ndim != 2 or col.shape[1] != P or val.shape != col.shape:
        raise ValueError(f"spmm_ell: col {tuple(col.shape)} / val {tuple(val.shape)} / row_len "
                         f"{tuple(row_len.shape)} do not describe an ELL [L, {P}]")
    y, bias, done = _output("spmm_ell", a, P, out_dtype, bias, no_entries=col.shape[0] == 0)
    if done:
        return y
    val = val.to(torch.float32).contiguous()

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(M, meta["BLOCK_M"]),)

    _launch(_spmm_ell_kernel, grid, a, col.to(torch.int32).contiguous(), val, row_len.to(torch.int32).contiguous(),
            bias if bias is not None else val, y, M, P, Q, a.stride(0), a.stride(1), y.stride(0), y.stride(1),
            A_T=a.stride(0) == 1 and M > 1, ROUND=a.dtype != torch.float32, HAS_BIAS=bias is not None)
    return y


def spmm_tiles_triton(a: Tensor, b: Tensor, ptr: Tensor, idx: Tensor, tile: int,
                      out_dtype: torch.dtype | None = None, bias: Tensor | None = None) -> Tensor:
    """Y[M, P] = A[M, Q] @ B[Q, P] (+ bias [P]), visiting only the listed non-empty (tile x tile) blocks of B."""
    _check_a("spmm_tiles", a)
    M, Q = a.shape
    if b.ndim != 2 or b.shape[0] != Q:
        raise ValueError(f"spmm_tiles: A is {tuple(a.shape)} but B is {tuple(b.shape)}; want B [{Q}, P]")
    if tile < 16 or tile & (tile - 1):
        raise ValueError(f"spmm_tiles: tile must be a power of two >= 16, got {tile}")
    P = b.shape[1]
    if ptr.shape != (triton.cdiv(P, tile) + 1,):
        raise ValueError(f"spmm_tiles: ptr has shape {tuple(ptr.shape)}, want ({triton.cdiv(P, tile) + 1},)")
    y, bias, done = _output("spmm_tiles", a, P, out_dtype, bias, no_entries=idx.numel() == 0)
    if done:
        return y
    ieee = a.dtype == torch.float32

    def grid(meta):
        return (triton.cdiv(P, tile) * triton.cdiv(M, meta["BLOCK_M"]),)

    _launch(_spmm_tiles_kernel, grid, a, b, ptr.contiguous(), idx.contiguous(), bias if bias is not None else a, y,
                             M, P, Q, a.stride(0), a.stride(1), b.stride(0), b.stride(1), y.stride(0),
                             y.stride(1), TILE=tile, IEEE=ieee, HAS_BIAS=bias is not None)
    return y


def sddmm_triton(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[z] = sum_m dy[m, rows[z]] * x[m, cols[z]] in fp32 (the dW of the listed entries)."""
    _check_a("sddmm", dy)
    _check_a("sddmm", x)
    if dy.shape[0] != x.shape[0] or rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"sddmm: dy {tuple(dy.shape)}, x {tuple(x.shape)}, rows {tuple(rows.shape)}, "
                         f"cols {tuple(cols.shape)} do not fit")
    M, Z = dy.shape[0], rows.numel()
    if Z == 0 or M == 0:
        return torch.zeros(Z, dtype=torch.float32, device=dy.device)
    # Split M so that at least ~4 programs per SM-sized slice exist even for a small support.
    splits = max(1, min(triton.cdiv(M, 256), 64 if not INTERPRET else 2))
    m_split = triton.cdiv(M, splits)
    splits = triton.cdiv(M, m_split)
    part = torch.empty((splits, Z), dtype=torch.float32, device=dy.device)

    def grid(meta):
        return (triton.cdiv(Z, meta["BLOCK_Z"]), splits)

    _launch(_sddmm_kernel, grid, dy, x, rows.to(torch.int32).contiguous(), cols.to(torch.int32).contiguous(), part,
            M, Z, m_split, 1 << max(Z - 1, 0).bit_length(), dy.stride(0), dy.stride(1), x.stride(0), x.stride(1))
    return part.sum(0)
