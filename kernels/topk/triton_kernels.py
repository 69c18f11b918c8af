"""The "triton" kernel set of the top-k projection (tables.TopkKernels): the streaming passes in Triton.

Each pass is launched once for every tensor of one group (one program per BLOCK elements of one tensor):
- `_topk_sample_kernel`: S evenly spaced keys per tensor (a cheap first guess of the threshold);
- `_topk_hist_kernel`: the window histogram of each tensor's keys (_triton_util.window_hist), read only;
- `_topk_apply_kernel`: zero the entries below the selected bin, scale the survivors (weight decay), and
  append the entries inside the bin (key, logical index) to a candidate list;
- `_topk_scatter_kernel`: multiply listed entries by a factor (0 for candidates that lost).

Tensors are addressed as `x_ptr + off[t] + q`, with x_ptr the group's lowest-address tensor (a kernel
argument, so Triton knows its alignment) and off[t] its Meta.OFFSET; with ALIGNED (every offset a multiple
of 16 bytes) whole blocks load and store as 16-byte vectors. Keys and tables: tables.py, _schema.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._env import INTERPRET
from .._triton_util import (BLOCK, D_ACTIVE, D_CAND_OFFSET, D_HI, D_LO, DEC_W, HIST_W, KEY_PROT, M_COLS, M_MASK_PTR,
                            M_NUMEL, M_OFFSET, M_PROTECTED, M_ROW_OFFSET, M_ROWS, M_TRANSPOSED, META_W, NUM_WARPS,
                            TL_DTYPES, W_ACTIVE, WIN_W, rnd, window_hist)
from .tables import Group, TopkKernels


@triton.jit
def _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr):
    """Raw |x| bits (int32), the int64 selection key (protection included) and the logical flat index."""
    raw = tl.abs(x.to(tl.float32)).to(tl.int32, bitcast=True)
    key = raw.to(tl.int64)
    row = meta_ptr + t * META_W
    rows = tl.load(row + M_ROWS)
    cols = tl.load(row + M_COLS)
    is_t = tl.load(row + M_TRANSPOSED)
    prot = tl.load(row + M_PROTECTED)
    idx = q
    r = q
    c = q
    if is_t != 0:
        r = q % rows
        c = q // rows
        idx = r * cols + c
    elif prot != 0:
        r = q // cols
        c = q % cols
    if prot != 0:
        rowoff = tl.load(row + M_ROW_OFFSET)
        thr = tl.load(thr_ptr + rowoff + r, mask=m, other=0)
        cut = tl.load(cut_ptr + rowoff + r, mask=m, other=-1)
        is_p = (key > thr) | ((key == thr) & (c <= cut))
        key = tl.where(is_p, key + KEY_PROT, key)
    return raw, key, idx


@triton.jit
def _read_block(t, prog_start_ptr, x_ptr, meta_ptr, thr_ptr, cut_ptr, ALIGNED: tl.constexpr, VEC: tl.constexpr,
                BLOCK: tl.constexpr):
    """This program's block of tensor t: positions q, bounds mask, tensor base pointer, values x (whole
    blocks load without a mask, as 16-byte vectors when ALIGNED), raw bits, keys and logical indices."""
    q0 = tl.multiple_of(tl.load(prog_start_ptr + tl.program_id(0)), BLOCK)
    q = q0 + tl.arange(0, BLOCK)
    n = tl.load(meta_ptr + t * META_W + M_NUMEL)
    off = tl.load(meta_ptr + t * META_W + M_OFFSET)
    if ALIGNED:
        off = tl.multiple_of(off, VEC)
    m = q < n
    base = x_ptr + off
    if q0 + BLOCK <= n:
        x = tl.load(base + q)
    else:
        x = tl.load(base + q, mask=m, other=0.0)
    raw, key, idx = _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr)
    return q, m, base, x, raw, key, idx


@triton.jit
def _topk_sample_kernel(
    x_ptr, meta_ptr, thr_ptr, cut_ptr,     # group base, Meta table, per-row protection thresholds
    out_ptr,                               # int64 [T, S] sampled keys
    S,                                     # samples per tensor
    SB: tl.constexpr,
):
    t = tl.program_id(0)
    j = tl.program_id(1) * SB + tl.arange(0, SB)
    n = tl.load(meta_ptr + t * META_W + M_NUMEL)
    q = (j.to(tl.int64) * n) // S
    m = (j < S) & (q < n)                  # q < n fails only for an empty tensor
    base = x_ptr + tl.load(meta_ptr + t * META_W + M_OFFSET)
    x = tl.load(base + q, mask=m, other=0.0)
    raw, key, idx = _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr)
    tl.store(out_ptr + t * S + j, key, mask=j < S)


@triton.jit
def _topk_hist_kernel(
    prog_tid_ptr, prog_start_ptr,          # per program: tensor id (int32), first element (int64)
    x_ptr, meta_ptr, thr_ptr, cut_ptr,     # group base, Meta table, per-row protection thresholds
    win_ptr,                               # int64 [T, Window.WIDTH]
    hist_ptr,                              # int64 [T, Hist.WIDTH]
    ALIGNED: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
):
    t = tl.load(prog_tid_ptr + tl.program_id(0))
    win_row = win_ptr + t * WIN_W
    if tl.load(win_row + W_ACTIVE) != 0:
        q, m, base, x, raw, key, idx = _read_block(t, prog_start_ptr, x_ptr, meta_ptr, thr_ptr, cut_ptr, ALIGNED,
                                                   VEC, BLOCK)
        window_hist(raw, key, m, win_row, hist_ptr + t * HIST_W, BLOCK)


@triton.jit
def _topk_apply_kernel(
    prog_tid_ptr, prog_start_ptr,
    x_ptr, meta_ptr, thr_ptr, cut_ptr,
    dec_ptr,                               # int64 [T, Decision.WIDTH]
    decay_ptr,                             # float32 [T]: survivors are multiplied by it
    cnt_ptr,                               # int32 [T]: candidates written so far
    ckey_ptr, cidx_ptr,                    # int64 [M]: candidate keys and logical indices
    DTYPE: tl.constexpr, MASK_OUT: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    t = tl.load(prog_tid_ptr + tl.program_id(0))
    dec_row = dec_ptr + t * DEC_W
    if tl.load(dec_row + D_ACTIVE) != 0:
        q, m, base, x, raw, key, idx = _read_block(t, prog_start_ptr, x_ptr, meta_ptr, thr_ptr, cut_ptr, ALIGNED,
                                                   VEC, BLOCK)
        lo = tl.load(dec_row + D_LO)
        hi = tl.load(dec_row + D_HI)
        keep = m & (key >= hi)
        cand = m & (key >= lo) & (key < hi)
        if MASK_OUT:
            out = tl.load(meta_ptr + t * META_W + M_MASK_PTR).to(tl.pointer_type(tl.int8))
            tl.store(out + q, keep.to(tl.int8), mask=m)
        else:
            drop = m & (key < lo) & (raw != 0)
            tl.store(base + q, tl.zeros([BLOCK], DTYPE), mask=drop)
            decay = tl.load(decay_ptr + t)
            if decay != 1.0:
                tl.store(base + q, rnd(x.to(tl.float32) * decay, DTYPE).to(DTYPE), mask=keep)
        c32 = cand.to(tl.int32)
        nc = tl.sum(c32, 0)
        if nc > 0:
            start = tl.atomic_add(cnt_ptr + t, nc)
            pos = tl.load(dec_row + D_CAND_OFFSET) + start + tl.cumsum(c32, 0) - 1
            tl.store(ckey_ptr + pos, key, mask=cand)
            tl.store(cidx_ptr + pos, idx, mask=cand)


@triton.jit
def _topk_scatter_kernel(
    tid_ptr, idx_ptr, fac_ptr,             # per listed entry: tensor id (int64), logical index, factor
    M,
    x_ptr, meta_ptr,
    DTYPE: tl.constexpr, MASK_OUT: tl.constexpr, BLOCK: tl.constexpr,
):
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < M
    t = tl.load(tid_ptr + j, mask=m, other=0)
    idx = tl.load(idx_ptr + j, mask=m, other=0)
    fac = tl.load(fac_ptr + j, mask=m, other=1.0)
    row = meta_ptr + t * META_W
    rows = tl.load(row + M_ROWS, mask=m, other=1)
    cols = tl.load(row + M_COLS, mask=m, other=1)
    is_t = tl.load(row + M_TRANSPOSED, mask=m, other=0)
    q = tl.where(is_t != 0, (idx % cols) * rows + idx // cols, idx)
    if MASK_OUT:
        out = tl.load(row + M_MASK_PTR, mask=m, other=0).to(tl.pointer_type(tl.int8))
        tl.store(out + q, tl.full([BLOCK], 1, tl.int8), mask=m & (fac != 0.0))
    else:
        ptr = x_ptr + tl.load(row + M_OFFSET, mask=m, other=0) + q
        x = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
        y = tl.where(fac == 0.0, 0.0, rnd(x * fac, DTYPE))
        tl.store(ptr, y.to(DTYPE), mask=m)


class TritonTopkKernels(TopkKernels):
    """The passes as Triton launches (the group's base tensor, tables and flags from tables.Group)."""

    name = "triton"
    block = BLOCK
    samples = 256 if INTERPRET else 4096

    def sample(self, g: Group, out) -> None:
        T, S = out.shape
        SB = min(1024, triton.next_power_of_2(S))
        _topk_sample_kernel[(T, triton.cdiv(S, SB))](g.base, g.meta, g.thr, g.cut, out, S, SB=SB)

    def hist(self, g: Group, win, hist) -> None:
        _topk_hist_kernel[(g.prog_tid.numel(),)](
            g.prog_tid, g.prog_start, g.base, g.meta, g.thr, g.cut, win, hist,
            ALIGNED=g.aligned, VEC=16 // g.base.element_size(), BLOCK=BLOCK, num_warps=NUM_WARPS)

    def apply(self, g: Group, dec, decay, cnt, ckey, cidx, mask_out: bool) -> None:
        _topk_apply_kernel[(g.prog_tid.numel(),)](
            g.prog_tid, g.prog_start, g.base, g.meta, g.thr, g.cut, dec, decay, cnt, ckey, cidx,
            DTYPE=TL_DTYPES[g.dtype], MASK_OUT=bool(mask_out), ALIGNED=g.aligned,
            VEC=16 // g.base.element_size(), BLOCK=BLOCK, num_warps=NUM_WARPS)

    def scatter(self, g: Group, tid, idx, fac, mask_out: bool) -> None:
        M = idx.numel()
        SB = 1024
        _topk_scatter_kernel[(triton.cdiv(M, SB),)](
            tid, idx, fac, M, g.base, g.meta, DTYPE=TL_DTYPES[g.dtype], MASK_OUT=bool(mask_out), BLOCK=SB)
