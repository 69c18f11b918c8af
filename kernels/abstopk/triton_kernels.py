"""Triton kernels of AbsTopK (the "triton" backend): a per-row threshold search instead of a sort.

Algorithm (one program per BLOCK_R rows): find each row's k-th largest key by deciding its bits from the
top, the key being the integer bit pattern of |x| (reference.py): with `prefix` the bits decided so far,
`prefix | bit` is taken when at least k keys of the row reach it. After KEY_BITS steps (15 for 16-bit
floats, 31 for float32, 63 for float64) prefix is the k-th largest key, thr. With EARLY_EXIT a row stops
as soon as exactly k keys reach its prefix (the usual case for float32 rows without ties), and thr is then
the smallest of those k keys. Entries with key > thr are kept, and of the ties (key == thr) the first
k - count(key > thr) in column order (a running count: `tl.cumsum`). Every step is a compare and a sum
over the row held in registers, so x is read from memory once and y written once; no sort, no index list.
Rows wider than one tile (CHUNKED) re-read their chunks at every step (from L2).

- `_abstopk_fwd_kernel`: x [M, C] (any strides) -> y [M, C] contiguous, thr and cut int64 [M] (the row's
  selection, as reference.py defines it);
- `_abstopk_bwd_kernel`: dx = g where kept else 0, the mask rebuilt from (y, thr, cut).
Accepted dtypes: float16, bfloat16, float32, float64 (only loads, bit casts and integer compares: exact
under TRITON_INTERPRET=1 too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._env import INTERPRET
from .reference import key_max

_KEY_BITS = {torch.float16: 15, torch.bfloat16: 15, torch.float32: 31, torch.float64: 63}
MAX_TILE = 8192                     # widest row held whole in registers; wider rows are chunked


@triton.jit
def _keys(x, KEY_BITS: tl.constexpr):
    """|x| as its bit pattern: int32 (int64 for float64), -1 never occurs (masked entries use it)."""
    if KEY_BITS == 15:
        key = x.to(tl.int16, bitcast=True).to(tl.int32) & 0x7FFF
    elif KEY_BITS == 31:
        key = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    else:
        key = x.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF
    return key


@triton.jit
def _load_keys(x_ptr, rows, cols, M, C, stride_xm, stride_xc, KEY_BITS: tl.constexpr):
    """x[rows, cols] and its keys (-1 outside the tensor)."""
    m = (rows[:, None] < M) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :].to(tl.int64) * stride_xc,
                mask=m, other=0.0)
    return x, tl.where(m, _keys(x, KEY_BITS), -1)


@triton.jit
def _kth_key_tile(key, k, rmask, KEY_BITS: tl.constexpr, EARLY_EXIT: tl.constexpr, BLOCK_R: tl.constexpr):
    """Per row of the tile `key` [BLOCK_R, BLOCK_C]: its k-th largest key."""
    prefix = tl.zeros([BLOCK_R], dtype=key.dtype)
    if EARLY_EXIT:
        done = rmask == 0                             # padding rows are done from the start
        bit = tl.full([], KEY_BITS - 1, tl.int32)
        n_open = tl.sum((done == 0).to(tl.int32), axis=0)
        while (bit >= 0) & (n_open > 0):
            cand = prefix | (tl.full([BLOCK_R], 1, key.dtype) << bit.to(key.dtype))
            cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
            take = (cnt >= k) & (done == 0)
            prefix = tl.where(take, cand, prefix)
            done = done | (take & (cnt == k))
            n_open = tl.sum((done == 0).to(tl.int32), axis=0)
            bit -= 1
        # a row that stopped early has exactly k keys >= prefix: the k-th is the smallest of them
        big = tl.full([BLOCK_R, 1], (1 << KEY_BITS) - 1, key.dtype)
        thr = tl.min(tl.where(key >= prefix[:, None], key, big), axis=1)
    else:
        for i in tl.static_range(KEY_BITS):
            cand = prefix | (1 << (KEY_BITS - 1 - i))
            cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
            prefix = tl.where(cnt >= k, cand, prefix)
        thr = prefix
    return thr


@triton.jit
def _abstopk_fwd_kernel(
    x_ptr, y_ptr, thr_ptr, cut_ptr,        # x [M, C] strided; y [M, C] contiguous; thr, cut int64 [M]
    M, C, k,
    stride_xm, stride_xc,
    KEY_BITS: tl.constexpr, EARLY_EXIT: tl.constexpr, CHUNKED: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    cols = tl.arange(0, BLOCK_C)
    out_row = rows[:, None].to(tl.int64) * C
    if not CHUNKED:                        # the row tile lives in registers: one read, one write
        x, key = _load_keys(x_ptr, rows, cols, M, C, stride_xm, stride_xc, KEY_BITS)
        thr = _kth_key_tile(key, k, rmask, KEY_BITS, EARLY_EXIT, BLOCK_R)
        gt = key > thr[:, None]
        need = k - tl.sum(gt.to(tl.int32), axis=1)                 # ties to take (>= 1 when k >= 1)
        tie = key == thr[:, None]
        rank = tl.cumsum(tie.to(tl.int32), axis=1)                 # 1-based rank among the row's ties
        keep = gt | (tie & (rank <= need[:, None]))
        cut = tl.max(tl.where(tie & (rank == need[:, None]), cols[None, :], -1), axis=1)
        every_tie = (need > 0) & (need >= tl.sum(tie.to(tl.int32), axis=1))
        cut = tl.where(every_tie, C - 1, cut)
        tl.store(y_ptr + out_row + cols[None, :], tl.where(keep, x, tl.zeros_like(x)),
                 mask=rmask[:, None] & (cols[None, :] < C))
    else:                                  # wide rows: every step sweeps the row chunk by chunk
        prefix = tl.zeros([BLOCK_R], dtype=tl.int64 if KEY_BITS == 63 else tl.int32)
        for i in range(KEY_BITS):          # not unrolled: the body holds a loop of its own
            cand = prefix | (tl.full([BLOCK_R], 1, prefix.dtype) << (tl.full([BLOCK_R], KEY_BITS - 1, prefix.dtype) - i))
            cnt = tl.zeros([BLOCK_R], dtype=tl.int32)
            for c0 in range(0, C, BLOCK_C):
                x, key = _load_keys(x_ptr, rows, c0 + cols, M, C, stride_xm, stride_xc, KEY_BITS)
                cnt += tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
            prefix = tl.where(cnt >= k, cand, prefix)
        thr = prefix
        ngt = tl.zeros([BLOCK_R], dtype=tl.int32)
        for c0 in range(0, C, BLOCK_C):
            x, key = _load_keys(x_ptr, rows, c0 + cols, M, C, stride_xm, stride_xc, KEY_BITS)
            ngt += tl.sum((key > thr[:, None]).to(tl.int32), axis=1)
        need = k - ngt
        seen = tl.zeros([BLOCK_R], dtype=tl.int32)                 # ties in earlier chunks
        cut = tl.full([BLOCK_R], -1, tl.int32)
        for c0 in range(0, C, BLOCK_C):
            x, key = _load_keys(x_ptr, rows, c0 + cols, M, C, stride_xm, stride_xc, KEY_BITS)
            tie = key == thr[:, None]
            rank = seen[:, None] + tl.cumsum(tie.to(tl.int32), axis=1)
            keep = (key > thr[:, None]) | (tie & (rank <= need[:, None]))
            cut = tl.maximum(cut, tl.max(tl.where(tie & (rank == need[:, None]), c0 + cols[None, :], -1), axis=1))
            seen += tl.sum(tie.to(tl.int32), axis=1)
            tl.store(y_ptr + out_row + c0 + cols[None, :], tl.where(keep, x, tl.zeros_like(x)),
                     mask=rmask[:, None] & (c0 + cols[None, :] < C))
        cut = tl.where((need > 0) & (need >= seen), C - 1, cut)       # every tie kept
    tl.store(thr_ptr + rows, thr.to(tl.int64), mask=rmask)
    tl.store(cut_ptr + rows, cut.to(tl.int64), mask=rmask)


@triton.jit
def _abstopk_bwd_kernel(
    g_ptr, y_ptr, thr_ptr, cut_ptr, dx_ptr,   # g [M, C] strided; y, dx [M, C] contiguous; thr, cut [M]
    M, C,
    stride_gm, stride_gc,
    KEY_BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (rows[:, None] < M) & (cols[None, :] < C)
    rows64 = rows[:, None].to(tl.int64)
    y = tl.load(y_ptr + rows64 * C + cols[None, :], mask=m, other=0.0)
    key = _keys(y, KEY_BITS)
    thr = tl.load(thr_ptr + rows, mask=rows < M, other=0)[:, None]
    cut = tl.load(cut_ptr + rows, mask=rows < M, other=-1)[:, None]
    keep = (key > thr) | ((key == thr) & (cols[None, :] <= cut))
    g = tl.load(g_ptr + rows64 * stride_gm + cols[None, :].to(tl.int64) * stride_gc, mask=m, other=0.0)
    tl.store(dx_ptr + rows64 * C + cols[None, :], tl.where(keep, g, tl.zeros_like(g)), mask=m)


def _check(op: str, t: Tensor) -> None:
    if t.ndim != 2 or t.dtype not in _KEY_BITS:
        raise ValueError(f"{op}: want a 2-D {tuple(_KEY_BITS)} tensor, got {tuple(t.shape)} {t.dtype}")
    if t.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{op}: Triton runs CPU tensors only under TRITON_INTERPRET=1")


def fwd_config(M: int, C: int, dtype: torch.dtype, **override) -> dict:
    """Launch parameters of the forward for rows of width C: a whole row per tile up to MAX_TILE, several
    narrow rows per program (about 2048 entries), one warp per 512 entries; `override` replaces any."""
    block_c = triton.next_power_of_2(max(C, 1))
    chunked = block_c > MAX_TILE
    if chunked:
        block_c = 4096
    block_r = 1 if chunked else max(1, min(64, 2048 // block_c, triton.next_power_of_2(max(M, 1))))
    cfg = dict(BLOCK_R=block_r, BLOCK_C=block_c, CHUNKED=chunked, EARLY_EXIT=_KEY_BITS[dtype] >= 31,
               num_warps=min(16, max(1, block_r * block_c // 512)))
    cfg.update(override)
    return cfg


def abstopk_fwd_triton(x: Tensor, k: int, **override) -> tuple[Tensor, Tensor, Tensor]:
    """(y [M, C] contiguous, thr [M], cut [M]) of x [M, C] (any strides), 0 <= k <= C; `override` sets
    launch parameters (see fwd_config; tests use it to force the chunked path on small rows)."""
    _check("abstopk", x)
    M, C = x.shape
    if not 0 <= k <= C:
        raise ValueError(f"abstopk: k={k} outside [0, {C}]")
    y = torch.empty((M, C), dtype=x.dtype, device=x.device)
    thr = torch.empty(M, dtype=torch.int64, device=x.device)
    cut = torch.empty(M, dtype=torch.int64, device=x.device)
    if M == 0:
        return y, thr, cut
    if C == 0:
        return y, thr.fill_(key_max(x.dtype)), cut.fill_(-1)
    cfg = fwd_config(M, C, x.dtype, **override)
    nw = cfg.pop("num_warps")
    if INTERPRET:
        nw = 1
    _abstopk_fwd_kernel[(triton.cdiv(M, cfg["BLOCK_R"]),)](
        x, y, thr, cut, M, C, k, x.stride(0), x.stride(1), KEY_BITS=_KEY_BITS[x.dtype], num_warps=nw, **cfg)
    return y, thr, cut


def abstopk_bwd_triton(g: Tensor, y: Tensor, thr: Tensor, cut: Tensor) -> Tensor:
    """dx [M, C] contiguous: g (any strides) where the selection (y contiguous, thr, cut) kept, else 0."""
    _check("abstopk backward", g)
    M, C = y.shape
    if g.shape != y.shape or g.dtype != y.dtype or not y.is_contiguous():
        raise ValueError(f"abstopk backward: g {tuple(g.shape)} {g.dtype} does not match the saved output "
                         f"{tuple(y.shape)} {y.dtype} (contiguous: {y.is_contiguous()})")
    dx = torch.empty((M, C), dtype=g.dtype, device=g.device)
    if g.numel() == 0:
        return dx
    block_c = min(triton.next_power_of_2(C), 64 if INTERPRET else 1024)
    block_r = max(1, min(64 if INTERPRET else 16, 4096 // block_c))
    grid = (triton.cdiv(M, block_r), triton.cdiv(C, block_c))
    _abstopk_bwd_kernel[grid](g, y, thr, cut, dx, M, C, g.stride(0), g.stride(1), KEY_BITS=_KEY_BITS[g.dtype],
                              BLOCK_R=block_r, BLOCK_C=block_c, num_warps=1 if INTERPRET else 4)
    return dx
