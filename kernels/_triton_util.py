"""Triton helpers shared by the top-k and AdamW kernels: dtype map, rounding, table columns, the window
histogram. Table layouts are declared in _schema.py; the aliases below are the constexpr form Triton
needs (a kernel may read a module global only when it is a tl.constexpr).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._env import INTERPRET
from ._schema import INF_BITS, NB, PROT, AdamHyp, AdamPtrs, Decision, Hist, Meta, Window

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
             torch.float64: tl.float64}
BLOCK = 256 if INTERPRET else 4096         # elements per program (small when interpreted: many blocks)
NUM_WARPS = 8

NBINS = tl.constexpr(NB)
KEY_BAD = tl.constexpr(INF_BITS)
KEY_PROT = tl.constexpr(PROT)

META_W = tl.constexpr(Meta.WIDTH)
M_NUMEL = tl.constexpr(Meta.NUMEL)
M_ROWS = tl.constexpr(Meta.ROWS)
M_COLS = tl.constexpr(Meta.COLS)
M_TRANSPOSED = tl.constexpr(Meta.TRANSPOSED)
M_PROTECTED = tl.constexpr(Meta.PROTECTED)
M_ROW_OFFSET = tl.constexpr(Meta.ROW_OFFSET)
M_MASK_PTR = tl.constexpr(Meta.MASK_PTR)
M_OFFSET = tl.constexpr(Meta.OFFSET)

WIN_W = tl.constexpr(Window.WIDTH)
W_LO = tl.constexpr(Window.LO)
W_SHIFT = tl.constexpr(Window.SHIFT)
W_ACTIVE = tl.constexpr(Window.ACTIVE)

HIST_W = tl.constexpr(Hist.WIDTH)
H_ABOVE = tl.constexpr(Hist.ABOVE)
H_BAD = tl.constexpr(Hist.BAD)
H_FIRST_BIN = tl.constexpr(Hist.FIRST_BIN)

DEC_W = tl.constexpr(Decision.WIDTH)
D_LO = tl.constexpr(Decision.LO)
D_HI = tl.constexpr(Decision.HI)
D_CAND_OFFSET = tl.constexpr(Decision.CAND_OFFSET)
D_ACTIVE = tl.constexpr(Decision.ACTIVE)

PTRS_W = tl.constexpr(AdamPtrs.WIDTH)
A_NUMEL = tl.constexpr(AdamPtrs.NUMEL)
A_SLOT = tl.constexpr(AdamPtrs.SLOT)
A_P_OFF = tl.constexpr(AdamPtrs.P_OFF)
A_G_OFF = tl.constexpr(AdamPtrs.G_OFF)
A_M_OFF = tl.constexpr(AdamPtrs.M_OFF)
A_V_OFF = tl.constexpr(AdamPtrs.V_OFF)

HYP_W = tl.constexpr(AdamHyp.WIDTH)
Y_STEP_SIZE = tl.constexpr(AdamHyp.STEP_SIZE)
Y_BC2 = tl.constexpr(AdamHyp.BC2)
Y_EPS = tl.constexpr(AdamHyp.EPS)
Y_OMB1 = tl.constexpr(AdamHyp.OMB1)
Y_BETA2 = tl.constexpr(AdamHyp.BETA2)
Y_DECAY = tl.constexpr(AdamHyp.DECAY)
Y_OMB2 = tl.constexpr(AdamHyp.OMB2)


@triton.jit
def rnd(x, DTYPE: tl.constexpr):
    """float32 x rounded (to nearest even) to DTYPE, returned as float32. bfloat16 is rounded with integer
    ops because the interpreter truncates in .to(tl.bfloat16); the result is then exactly representable."""
    if DTYPE == tl.bfloat16:
        b = x.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        return b.to(tl.float32, bitcast=True)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def window_hist(raw, key, valid, win_row, hist_row, BLOCK: tl.constexpr):
    """Count one block of keys into a tensor's Hist row for the window in its Window row: keys at or above
    the window's top, NaN/inf entries (by their raw |x| bits), and the bins of the keys inside it."""
    nbad = tl.sum((valid & (raw >= KEY_BAD)).to(tl.int64), 0)
    if nbad > 0:
        tl.atomic_add(hist_row + H_BAD, nbad)
    lo = tl.load(win_row + W_LO)
    shift = tl.load(win_row + W_SHIFT)
    hi = lo + (tl.full((), NBINS, tl.int64) << shift)
    above = tl.sum((valid & (key >= hi)).to(tl.int64), 0)
    if above > 0:
        tl.atomic_add(hist_row + H_ABOVE, above)
    inw = valid & (key >= lo) & (key < hi)
    b = tl.where(inw, (key - lo) >> shift, 0)
    tl.atomic_add(hist_row + H_FIRST_BIN + b, tl.full([BLOCK], 1, tl.int64), mask=inw)
