"""The "triton" kernel set of the fused Adam pass (tables.AdamKernels).

One program per BLOCK elements of one tensor. Per-tensor tables: AdamPtrs (the element offsets of p, g, m,
v from the base arguments pb_ptr..vb_ptr; the raw pointers are for CUDA) and AdamHyp, each hyperparameter
rounded from double as torch rounds a Python scalar. For a projected tensor with an active Window row the
pass also builds the projection's first histogram on the stored new value (_triton_util.window_hist,
the counts the top-k histogram pass would make).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._triton_util import (A_G_OFF, A_M_OFF, A_NUMEL, A_P_OFF, A_SLOT, A_V_OFF, BLOCK, HIST_W, HYP_W, NUM_WARPS,
                            PTRS_W, TL_DTYPES, W_ACTIVE, WIN_W, Y_BC2, Y_BETA2, Y_DECAY, Y_EPS, Y_OMB1, Y_OMB2,
                            Y_STEP_SIZE, rnd, window_hist)
from .tables import AdamGroup, AdamKernels


@triton.jit
def _off(row, col, ALIGNED: tl.constexpr, VEC: tl.constexpr):
    off = tl.load(row + col)
    if ALIGNED:
        off = tl.multiple_of(off, VEC)
    return off


@triton.jit
def _adamw_kernel(
    prog_tid_ptr, prog_start_ptr,          # per program: tensor id (int32), first element (int64)
    pb_ptr, gb_ptr, mb_ptr, vb_ptr,        # base of p, g, m, v (lowest address of each role)
    ptrs_ptr, hyp_ptr,                     # int64 [T, AdamPtrs.WIDTH], float32 [T, AdamHyp.WIDTH]
    scale_ptr,                             # float32 [1]: gradient RMS scale
    win_ptr, hist_ptr,                     # projection: int64 [Tp, Window.WIDTH], int64 [Tp, Hist.WIDTH]
    DTYPE: tl.constexpr, ALIGNED: tl.constexpr, VEC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    q0 = tl.multiple_of(tl.load(prog_start_ptr + pid), BLOCK)
    q = q0 + tl.arange(0, BLOCK)
    row = ptrs_ptr + t * PTRS_W
    n = tl.load(row + A_NUMEL)
    msk = q < n
    full = q0 + BLOCK <= n
    p_ptr = pb_ptr + _off(row, A_P_OFF, ALIGNED, VEC)
    g_ptr = gb_ptr + _off(row, A_G_OFF, ALIGNED, VEC)
    m_ptr = mb_ptr + _off(row, A_M_OFF, ALIGNED, VEC)
    v_ptr = vb_ptr + _off(row, A_V_OFF, ALIGNED, VEC)
    hyp = hyp_ptr + t * HYP_W
    step_size = tl.load(hyp + Y_STEP_SIZE)
    bc2 = tl.load(hyp + Y_BC2)
    eps = tl.load(hyp + Y_EPS)
    omb1 = tl.load(hyp + Y_OMB1)
    beta2 = tl.load(hyp + Y_BETA2)
    decay = tl.load(hyp + Y_DECAY)
    omb2 = tl.load(hyp + Y_OMB2)
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
    g = rnd(g * scale, DTYPE)
    m = rnd(m + omb1 * (g - m), DTYPE)
    v = rnd(v * beta2, DTYPE)
    v = rnd(v + (omb2 * g) * g, DTYPE)
    denom = rnd(rnd(tl.sqrt_rn(rnd(tl.div_rn(v, bc2), DTYPE)), DTYPE) + eps, DTYPE)
    p = rnd(p - step_size * tl.div_rn(m, denom), DTYPE)
    if decay != 1.0:
        p = rnd(p * decay, DTYPE)
    p_new = p.to(DTYPE)
    if full:
        tl.store(p_ptr + q, p_new)
        tl.store(m_ptr + q, m.to(DTYPE))   # already representable: exact
        tl.store(v_ptr + q, v.to(DTYPE))
    else:
        tl.store(p_ptr + q, p_new, mask=msk)
        tl.store(m_ptr + q, m.to(DTYPE), mask=msk)
        tl.store(v_ptr + q, v.to(DTYPE), mask=msk)

    slot = tl.load(row + A_SLOT)
    if slot >= 0:
        win_row = win_ptr + slot * WIN_W
        if tl.load(win_row + W_ACTIVE) != 0:
            key = tl.abs(p_new.to(tl.float32)).to(tl.int32, bitcast=True)
            window_hist(key, key.to(tl.int64), msk, win_row, hist_ptr + slot * HIST_W, BLOCK)


class TritonAdamKernels(AdamKernels):
    """The fused Adam pass as one Triton launch per dtype."""

    name = "triton"
    block = BLOCK

    def adam(self, g: AdamGroup, scale, win, hist) -> None:
        pb, gb, mb, vb = g.bases
        _adamw_kernel[(g.prog_tid.numel(),)](
            g.prog_tid, g.prog_start, pb, gb, mb, vb, g.ptrs, g.hyp, scale, win, hist,
            DTYPE=TL_DTYPES[g.dtype], ALIGNED=bool(g.aligned), VEC=16 // pb.element_size(), BLOCK=BLOCK,
            num_warps=NUM_WARPS)
