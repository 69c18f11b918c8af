"""Triton kernels of the batched exact top-k projection (the "triton" backend).

The algorithm and its bookkeeping live in topk_device.py; this file holds only the streaming passes,
each launched once for every tensor of one dtype (a table of per-tensor metadata, one program per
BLOCK elements of one tensor):
- `_topk_sample_kernel`: S evenly spaced keys per tensor (a cheap first guess of the threshold);
- `_topk_hist_kernel`: per tensor, the count of keys >= the window's top, a histogram of the keys inside
  the window [lo, lo + NB << shift) and the count of NaN/inf (read only);
- `_topk_apply_kernel`: zero the entries below the selected bin, scale the survivors (weight decay),
  and append the entries inside the bin (key, logical index) to a candidate list;
- `_topk_scatter_kernel`: multiply listed entries by a factor (0 for candidates that lost).

Tensors are addressed as `x_ptr + off[t] + q`, with x_ptr the group's lowest data pointer (a kernel
argument, so Triton knows its alignment) and off[t] the element offset of tensor t; with ALIGNED (every
offset a multiple of 16 bytes) whole blocks load and store as 16-byte vectors.

Keys: the float32 bit pattern of |w| as an integer, which orders like |w| (+0 and -0 give 0); an entry
protected by its row's top-j gets 2**31 added (see topk.py for the protection rule). Tensor metadata
(`meta`, int64 [T, 8]): data pointer, numel, rows R, cols C, transposed flag, protected flag, offset of
its rows in the per-row threshold arrays, and the pointer of a bool output (mask mode).
A transposed tensor is a 2-D view with stride (1, R): memory position q holds row q % R, col q // R.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._env import INTERPRET

NB = 2048                                  # histogram bins per tensor and window
LOG_NB = 11
PROT = 1 << 31                             # added to the key of a protected entry
BLOCK = 256 if INTERPRET else 4096         # elements per program (small when interpreted: many blocks)
NUM_WARPS = 8
META_COLS = 12

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}


@triton.jit
def _rnd(x, DTYPE: tl.constexpr):
    """float32 x rounded (to nearest even) to DTYPE, returned as float32. bfloat16 is rounded with integer
    ops because the interpreter truncates in .to(tl.bfloat16); the result is then exactly representable."""
    if DTYPE == tl.bfloat16:
        b = x.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        return b.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def _block(pid, t, prog_start_ptr, x_ptr, meta_ptr, ALIGNED: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr):
    """This program's first element q0, positions q, tensor size n, bounds mask and tensor base pointer."""
    q0 = tl.multiple_of(tl.load(prog_start_ptr + pid), BLOCK)
    q = q0 + tl.arange(0, BLOCK)
    n = tl.load(meta_ptr + t * 12 + 1)
    off = tl.load(meta_ptr + t * 12 + 8)
    if ALIGNED:
        off = tl.multiple_of(off, VEC)
    return q0, q, n, q < n, x_ptr + off


@triton.jit
def _load(base, q, q0, n, m, BLOCK: tl.constexpr):
    """base[q] as float-typed block; whole blocks load without a mask (vectorizable)."""
    if q0 + BLOCK <= n:
        x = tl.load(base + q)
    else:
        x = tl.load(base + q, mask=m, other=0.0)
    return x


@triton.jit
def _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr):
    """Raw |x| bits (int32), the int64 selection key (protection included) and the logical flat index."""
    raw = tl.abs(x.to(tl.float32)).to(tl.int32, bitcast=True)
    key = raw.to(tl.int64)
    rows = tl.load(meta_ptr + t * 12 + 2)
    cols = tl.load(meta_ptr + t * 12 + 3)
    is_t = tl.load(meta_ptr + t * 12 + 4)
    prot = tl.load(meta_ptr + t * 12 + 5)
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
        rowoff = tl.load(meta_ptr + t * 12 + 6)
        thr = tl.load(thr_ptr + rowoff + r, mask=m, other=0)
        cut = tl.load(cut_ptr + rowoff + r, mask=m, other=-1)
        is_p = (key > thr) | ((key == thr) & (c <= cut))
        key = tl.where(is_p, key + 2147483648, key)
    return raw, key, idx


@triton.jit
def _topk_sample_kernel(
    x_ptr, meta_ptr, thr_ptr, cut_ptr,     # group base, tensor table, per-row protection thresholds
    out_ptr,                               # int64 [T, S] sampled keys
    S,                                     # samples per tensor
    SB: tl.constexpr,
):
    t = tl.program_id(0)
    j = tl.program_id(1) * SB + tl.arange(0, SB)
    n = tl.load(meta_ptr + t * 12 + 1)
    q = (j.to(tl.int64) * n) // S
    m = (j < S) & (q < n)                  # q < n fails only for an empty tensor
    base = x_ptr + tl.load(meta_ptr + t * 12 + 8)
    x = tl.load(base + q, mask=m, other=0.0)
    raw, key, idx = _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr)
    tl.store(out_ptr + t * S + j, key, mask=j < S)


@triton.jit
def _topk_hist_kernel(
    prog_tid_ptr, prog_start_ptr,          # per program: tensor id (int32), first element (int64)
    x_ptr, meta_ptr, thr_ptr, cut_ptr,     # group base, tensor table, per-row protection thresholds
    win_ptr,                               # int64 [T, 4]: lo, shift, active
    hist_ptr,                              # int32 [T, NB]
    stats_ptr,                             # int64 [T, 4]: keys >= window top, NaN/inf count
    NBINS: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    active = tl.load(win_ptr + t * 4 + 2)
    if active != 0:
        q0, q, n, m, base = _block(pid, t, prog_start_ptr, x_ptr, meta_ptr, ALIGNED, VEC, BLOCK)
        x = _load(base, q, q0, n, m, BLOCK)
        raw, key, idx = _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr)
        nbad = tl.sum((m & (raw >= 0x7F800000)).to(tl.int64), 0)
        if nbad > 0:
            tl.atomic_add(stats_ptr + t * 4 + 1, nbad)
        lo = tl.load(win_ptr + t * 4)
        shift = tl.load(win_ptr + t * 4 + 1)
        hi = lo + (tl.full((), NBINS, tl.int64) << shift)
        above = tl.sum((m & (key >= hi)).to(tl.int64), 0)
        if above > 0:
            tl.atomic_add(stats_ptr + t * 4, above)
        inw = m & (key >= lo) & (key < hi)
        b = tl.where(inw, (key - lo) >> shift, 0)
        tl.atomic_add(hist_ptr + t * NBINS + b, tl.full([BLOCK], 1, tl.int32), mask=inw)


@triton.jit
def _topk_apply_kernel(
    prog_tid_ptr, prog_start_ptr,
    x_ptr, meta_ptr, thr_ptr, cut_ptr,
    fin_ptr,                               # int64 [T, 4]: bin lo, bin hi, candidate offset, active
    decay_ptr,                             # float32 [T]: survivors are multiplied by it
    cnt_ptr,                               # int32 [T]: candidates written so far
    ckey_ptr, cidx_ptr,                    # int64 [M]: candidate keys and logical indices
    DTYPE: tl.constexpr, MASK_OUT: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    active = tl.load(fin_ptr + t * 4 + 3)
    if active != 0:
        q0, q, n, m, base = _block(pid, t, prog_start_ptr, x_ptr, meta_ptr, ALIGNED, VEC, BLOCK)
        x = _load(base, q, q0, n, m, BLOCK)
        raw, key, idx = _keys(x, q, m, t, meta_ptr, thr_ptr, cut_ptr)
        lo = tl.load(fin_ptr + t * 4)
        hi = tl.load(fin_ptr + t * 4 + 1)
        keep = m & (key >= hi)
        cand = m & (key >= lo) & (key < hi)
        if MASK_OUT:
            out = tl.load(meta_ptr + t * 12 + 7).to(tl.pointer_type(tl.int8))
            tl.store(out + q, keep.to(tl.int8), mask=m)
        else:
            drop = m & (key < lo) & (raw != 0)
            tl.store(base + q, tl.zeros([BLOCK], DTYPE), mask=drop)
            decay = tl.load(decay_ptr + t)
            if decay != 1.0:
                tl.store(base + q, _rnd(x.to(tl.float32) * decay, DTYPE).to(DTYPE), mask=keep)
        c32 = cand.to(tl.int32)
        nc = tl.sum(c32, 0)
        if nc > 0:
            start = tl.atomic_add(cnt_ptr + t, nc)
            pos = tl.load(fin_ptr + t * 4 + 2) + start + tl.cumsum(c32, 0) - 1
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
    rows = tl.load(meta_ptr + t * 12 + 2, mask=m, other=1)
    cols = tl.load(meta_ptr + t * 12 + 3, mask=m, other=1)
    is_t = tl.load(meta_ptr + t * 12 + 4, mask=m, other=0)
    q = tl.where(is_t != 0, (idx % cols) * rows + idx // cols, idx)
    if MASK_OUT:
        out = tl.load(meta_ptr + t * 12 + 7, mask=m, other=0).to(tl.pointer_type(tl.int8))
        tl.store(out + q, tl.full([BLOCK], 1, tl.int8), mask=m & (fac != 0.0))
    else:
        ptr = x_ptr + tl.load(meta_ptr + t * 12 + 8, mask=m, other=0) + q
        x = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
        y = tl.where(fac == 0.0, 0.0, _rnd(x * fac, DTYPE))
        tl.store(ptr, y.to(DTYPE), mask=m)


class TritonTopkKernels:
    """The streaming passes of topk_device.py, as Triton launches. `g` is the group (topk_device.Group):
    base tensor `g.base` (lowest address), `g.aligned`, `g.dtype`, tables `g.meta`, `g.thr`, `g.cut`."""

    name = "triton"
    block = BLOCK
    samples = 256 if INTERPRET else 4096

    @staticmethod
    def sample(g, out):
        T, S = out.shape
        SB = min(1024, triton.next_power_of_2(S))
        _topk_sample_kernel[(T, triton.cdiv(S, SB))](g.base, g.meta, g.thr, g.cut, out, S, SB=SB)

    @staticmethod
    def hist(g, win, hist, stats):
        _topk_hist_kernel[(g.prog_tid.numel(),)](
            g.prog_tid, g.prog_start, g.base, g.meta, g.thr, g.cut, win, hist, stats,
            NBINS=NB, ALIGNED=g.aligned, VEC=16 // g.base.element_size(), BLOCK=BLOCK, num_warps=NUM_WARPS)

    @staticmethod
    def apply(g, fin, decay, cnt, ckey, cidx, mask_out):
        _topk_apply_kernel[(g.prog_tid.numel(),)](
            g.prog_tid, g.prog_start, g.base, g.meta, g.thr, g.cut, fin, decay, cnt, ckey, cidx,
            DTYPE=_TL_DTYPES[g.dtype], MASK_OUT=bool(mask_out), ALIGNED=g.aligned,
            VEC=16 // g.base.element_size(), BLOCK=BLOCK, num_warps=NUM_WARPS)

    @staticmethod
    def scatter(g, tid, idx, fac, mask_out):
        M = idx.numel()
        SB = 1024
        _topk_scatter_kernel[(triton.cdiv(M, SB),)](
            tid, idx, fac, M, g.base, g.meta, DTYPE=_TL_DTYPES[g.dtype], MASK_OUT=bool(mask_out), BLOCK=SB)

    @staticmethod
    def adam(prog_tid, prog_start, bases, aligned, ptrs, hyp, scale, win, hist, stats, dtype):
        from .adamw_triton import adam
        adam(prog_tid, prog_start, bases, aligned, ptrs, hyp, scale, win, hist, stats, dtype)
