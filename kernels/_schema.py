"""The tables the top-k and AdamW kernels read and write, named once for Python, Triton and CUDA.

Each class below is the row layout of one int64 (or float32) table: a column name is a class attribute
holding its index, WIDTH is the row length. csrc/sf_kernels.h declares the same names (`namespace meta {
constexpr int kNumel = 1; ... }`, snake-case namespace, `k` + CamelCase constants) and a test parses the
header and compares the two. Triton code reads these through the constexpr aliases in _triton_util.py.
docs/kernels.md describes the algorithm that fills them.
"""

from __future__ import annotations

import torch

NB = 2048                          # histogram bins per tensor and window
LOG_NB = 11                        # NB == 1 << LOG_NB
PROT = 1 << 31                     # added to the selection key of a protected entry
INF_BITS = 0x7F800000              # float32 bits of +inf: |x| bits at or above it are inf or NaN
CUDA_BLOCK = 4096                  # elements per CUDA block (threads x items per thread)

# dtype codes passed to the CUDA extension
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class Meta:
    """Per-tensor metadata of the top-k passes (int64 [T, WIDTH])."""

    PTR = 0            # data pointer (CUDA addresses tensors by pointer)
    NUMEL = 1
    ROWS = 2           # the logical view's rows R (1 for a 1-D tensor)
    COLS = 3           # its columns C
    TRANSPOSED = 4     # 1: a 2-D view with strides (1, R): memory position q holds row q % R, col q // R
    PROTECTED = 5      # 1: entries may be protected by their row's top-j
    ROW_OFFSET = 6     # first row of this tensor in the per-row protection arrays
    MASK_PTR = 7       # pointer of the bool output (mask mode)
    OFFSET = 8         # element offset from the group's base tensor (Triton addresses base + offset)
    WIDTH = 9


class Window:
    """Per-tensor histogram window of one pass (int64 [T, WIDTH]): bins of 2**SHIFT keys from LO."""

    LO = 0
    SHIFT = 1
    ACTIVE = 2         # 0: skip this tensor in this pass
    WIDTH = 3


class Hist:
    """Per-tensor result of a histogram pass (int64 [T, WIDTH]); the rows are what ranks all-reduce."""

    ABOVE = 0          # keys at or above the window's top
    BAD = 1            # NaN or inf entries
    FIRST_BIN = 2      # the first of NB bin counts
    WIDTH = FIRST_BIN + NB


class Decision:
    """Per-tensor decision the apply pass executes (int64 [T, WIDTH])."""

    LO = 0             # keys below LO are zeroed
    HI = 1             # keys at or above HI survive; keys in [LO, HI) are listed as candidates
    CAND_OFFSET = 2    # where this tensor's candidates start in the candidate lists
    ACTIVE = 3
    WIDTH = 4


class AdamPtrs:
    """Per-tensor addresses of the fused Adam pass (int64 [T, WIDTH])."""

    P = 0              # data pointers of p, g, m, v (CUDA)
    G = 1
    M = 2
    V = 3
    NUMEL = 4
    SLOT = 5           # row of this tensor in the projection's Window/Hist tables, or -1
    P_OFF = 6          # element offsets of p, g, m, v from their base tensors (Triton)
    G_OFF = 7
    M_OFF = 8
    V_OFF = 9
    WIDTH = 10


class AdamHyp:
    """Per-tensor hyperparameters of the fused Adam pass (float32 [T, WIDTH])."""

    STEP_SIZE = 0      # lr / (1 - beta1**t)
    BC2 = 1            # 1 - beta2**t
    EPS = 2
    OMB1 = 3           # 1 - beta1
    BETA2 = 4
    DECAY = 5          # factor applied to p in this pass (1 for projected tensors: they decay after it)
    OMB2 = 6           # 1 - beta2
    WIDTH = 7


TABLES = (Meta, Window, Hist, Decision, AdamPtrs, AdamHyp)


def columns(table: type) -> dict[str, int]:
    """{name: index} of a table's columns, WIDTH included."""
    return {k: v for k, v in vars(table).items() if k.isupper() and isinstance(v, int)}
