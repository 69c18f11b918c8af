"""Triton kernel of the fused Adam pass of SparseAdamW (see adamw.py for the math, adamw_device.py for use).

One program per BLOCK elements of one tensor. Per-tensor tables: `ptrs` (int64 [T, 12]: raw pointers of
p, g, m, v (the CUDA kernel reads these), numel, index in the projection list or -1, then the element
offsets of p, g, m, v from the base arguments pb_ptr..vb_ptr (Triton reads these; topk_triton.py says
why)) and `hyp` (float32 [T, 8]: lr / (1 - b1^t), 1 - b2^t, eps, 1 - b1, b2, the decay factor applied
here (1 for projected tensors), 1 - b2), each rounded from double as torch rounds a Python scalar. For a
projected tensor with an active warm window the pass also builds the projection's first histogram (the
counts of topk_triton._topk_hist_kernel, on the stored new value).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .topk_triton import _TL_DTYPES, BLOCK, NB, NUM_WARPS, _rnd


@triton.jit
def _off(ptrs_ptr, t, col, ALIGNED: tl.constexpr, VEC: tl.constexpr):
    off = tl.load(ptrs_ptr + t * 12 + col)
    if ALIGNED:
        off = tl.multiple_of(off, VEC)
    return off


@triton.jit
def _adamw_kernel(
    prog_tid_ptr, prog_start_ptr,          # per program: tensor id (int32), first element (int64)
    pb_ptr, gb_ptr, mb_ptr, vb_ptr,        # base of p, g, m, v (lowest address of each role)
    ptrs_ptr, hyp_ptr,                     # int64 [T, 12] offsets/sizes, float32 [T, 8] hyperparameters
    scale_ptr,                             # float32 [1]: gradient RMS scale
    win_ptr, hist_ptr, stats_ptr,          # projection: int64 [Tp, 4] windows, int32 [Tp, NB], int64 [Tp, 4]
    DTYPE: tl.constexpr, NBINS: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    q0 = tl.multiple_of(tl.load(prog_start_ptr + pid), BLOCK)
    q = q0 + tl.arange(0, BLOCK)
    n = tl.load(ptrs_ptr + t * 12 + 4)
    msk = q < n
    full = q0 + BLOCK <= n
    p_ptr = pb_ptr + _off(ptrs_ptr, t, 6, ALIGNED, VEC)
    g_ptr = gb_ptr + _off(ptrs_ptr, t, 7, ALIGNED, VEC)
    m_ptr = mb_ptr + _off(ptrs_ptr, t, 8, ALIGNED, VEC)
    v_ptr = vb_ptr + _off(ptrs_ptr, t, 9, ALIGNED, VEC)
    step_size = tl.load(hyp_ptr + t * 8)
    bc2 = tl.load(hyp_ptr + t * 8 + 1)
    eps = tl.load(hyp_ptr + t * 8 + 2)
    omb1 = tl.load(hyp_ptr + t * 8 + 3)
    beta2 = tl.load(hyp_ptr + t * 8 + 4)
    decay = tl.load(hyp_ptr + t * 8 + 5)
    omb2 = tl.load(hyp_ptr + t * 8 + 6)
    scale = tl.load(scale_ptr)

    # Math in float32, rounded to the parameter dtype wherever the torch reference stores a tensor
    # (a no-op for float32), so bf16/fp16 parameters follow the reference's roundings.
    if full:                               # unmasked: 16-byte vectors when ALIGNED
        p = tl.load(p_ptr + q).to(tl.float32)
        g = tl.load(g_ptr + q).to(tl.float32)
        m = tl.load(m_ptr + q).to(tl.float32)
        v = tl.load(v_ptr + q).to(tl.float32)
    else:
        p = tl.load(p_ptr + q, mask=msk, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + q, mask=msk, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + q, mask=msk, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + q, mask=msk, other=0.0).to(tl.float32)
    g = _rnd(g * scale, DTYPE)
    m = _rnd(m + omb1 * (g - m), DTYPE)
    v = _rnd(v * beta2, DTYPE)
    v = _rnd(v + (omb2 * g) * g, DTYPE)
    denom = _rnd(_rnd(tl.sqrt_rn(_rnd(tl.div_rn(v, bc2), DTYPE)), DTYPE) + eps, DTYPE)
    p = _rnd(p - step_size * tl.div_rn(m, denom), DTYPE)
    if decay != 1.0:
        p = _rnd(p * decay, DTYPE)
    p_new = p.to(DTYPE)
    if full:
        tl.store(p_ptr + q, p_new)
        tl.store(m_ptr + q, m.to(DTYPE))   # already representable: exact
        tl.store(v_ptr + q, v.to(DTYPE))
    else:
        tl.store(p_ptr + q, p_new, mask=msk)
        tl.store(m_ptr + q, m.to(DTYPE), mask=msk)
        tl.store(v_ptr + q, v.to(DTYPE), mask=msk)

    j = tl.load(ptrs_ptr + t * 12 + 5)
    if j >= 0:
        if tl.load(win_ptr + j * 4 + 2) != 0:
            key = tl.abs(p_new.to(tl.float32)).to(tl.int32, bitcast=True).to(tl.int64)
            nbad = tl.sum((msk & (key >= 0x7F800000)).to(tl.int64), 0)
            if nbad > 0:
                tl.atomic_add(stats_ptr + j * 4 + 1, nbad)
            lo = tl.load(win_ptr + j * 4)
            shift = tl.load(win_ptr + j * 4 + 1)
            hi = lo + (tl.full((), NBINS, tl.int64) << shift)
            above = tl.sum((msk & (key >= hi)).to(tl.int64), 0)
            if above > 0:
                tl.atomic_add(stats_ptr + j * 4, above)
            inw = msk & (key >= lo) & (key < hi)
            b = tl.where(inw, (key - lo) >> shift, 0)
            tl.atomic_add(hist_ptr + j * NBINS + b, tl.full([BLOCK], 1, tl.int32), mask=inw)


def adam(prog_tid, prog_start, bases, aligned, ptrs, hyp, scale, win, hist, stats, dtype) -> None:
    """Launch the fused Adam pass over every tensor in the tables (one dtype); bases = (p, g, m, v) tensors."""
    pb, gb, mb, vb = bases
    _adamw_kernel[(prog_tid.numel(),)](
        prog_tid, prog_start, pb, gb, mb, vb, ptrs, hyp, scale, win, hist, stats,
        DTYPE=_TL_DTYPES[dtype], NBINS=NB, ALIGNED=bool(aligned), VEC=16 // pb.element_size(), BLOCK=BLOCK,
        num_warps=NUM_WARPS)
