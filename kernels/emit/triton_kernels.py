"""The emit step's device half in Triton: the storage positions of every non-zero of a group of weights.

Two launches per dtype group (tables from topk/tables.py: one program per BLOCK elements of one tensor):
- `_emit_count_kernel` reads the weights once: per program, the number of non-zeros of its block and a
  bitmask of them (one bit per element: 1/32 of an fp32 read to write and to read back);
- a prefix sum over the programs' counts (torch, a few launches for the whole group) gives each block the
  slot of its first non-zero in its weight's segment of the output;
- `_emit_write_kernel` reads only the bitmasks and writes each non-zero's position, ascending.
So the weights are read once and the positions written once; nothing else is proportional to the weights.
Writes past a weight's cap are dropped (the caller raises when a count exceeds its cap).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import triton
import triton.language as tl

from .._triton_util import BLOCK, M_NUMEL, M_OFFSET, META_W, NUM_WARPS
from ..topk.tables import Group

WORDS = BLOCK // 32


@triton.jit
def _emit_count_kernel(
    prog_tid_ptr, prog_start_ptr,          # per program: tensor id (int32), first element (int64)
    x_ptr, meta_ptr,                       # group base tensor, Meta table
    cnt_ptr,                               # int32 [P]: non-zeros of each program's block
    bits_ptr,                              # int32 [P, WORDS]: bit j of word i is element 32 i + j of the block
    WIDEN: tl.constexpr,                   # 16-bit floats: compare in fp32 (-0.0 is zero in every dtype)
    BLOCK: tl.constexpr, WORDS: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    q = tl.load(prog_start_ptr + pid) + tl.arange(0, BLOCK)
    m = q < tl.load(meta_ptr + t * META_W + M_NUMEL)
    x = tl.load(x_ptr + tl.load(meta_ptr + t * META_W + M_OFFSET) + q, mask=m, other=0.0)
    if WIDEN:
        x = x.to(tl.float32)
    nz = (m & (x != 0.0)).to(tl.int32)
    tl.store(cnt_ptr + pid, tl.sum(nz, 0))
    shift = tl.arange(0, 32)
    words = tl.sum(tl.reshape(nz, (WORDS, 32)) << shift[None, :], 1)     # distinct bits: the sum is an OR
    tl.store(bits_ptr + pid * WORDS + tl.arange(0, WORDS), words.to(tl.int32))


@triton.jit
def _emit_write_kernel(
    prog_tid_ptr, prog_start_ptr,
    bits_ptr,                              # int32 [P, WORDS] from the count pass
    dest_ptr,                              # int64 [P]: output slot of the block's first non-zero
    end_ptr,                               # int64 [T]: end of each tensor's segment (its cap)
    out_ptr,                               # int64: storage positions
    BLOCK: tl.constexpr, WORDS: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(prog_tid_ptr + pid)
    words = tl.load(bits_ptr + pid * WORDS + tl.arange(0, WORDS))
    shift = tl.arange(0, 32)
    nz = tl.reshape((words[:, None] >> shift[None, :]) & 1, (BLOCK,))
    pos = tl.load(dest_ptr + pid) + tl.cumsum(nz, 0) - 1
    q = tl.load(prog_start_ptr + pid) + tl.arange(0, BLOCK)
    tl.store(out_ptr + pos, q, mask=(nz != 0) & (pos < tl.load(end_ptr + t)))


def positions_triton(g: Group, seg_start: list[int], caps: list[int], out: torch.Tensor, nnz: torch.Tensor) -> None:
    """Write the ascending storage positions of the non-zeros of the group's tensor i at out[seg_start[i]:],
    at most caps[i] of them, and their count at nnz[i] (int64 [len(seg_start)], on the device)."""
    dev = g.meta.device
    P = g.prog_tid.numel()
    if P == 0:
        nnz.zero_()
        return
    cnt = torch.empty(P, dtype=torch.int32, device=dev)
    bits = torch.empty(P, WORDS, dtype=torch.int32, device=dev)
    _emit_count_kernel[(P,)](g.prog_tid, g.prog_start, g.base, g.meta, cnt, bits, WIDEN=g.base.element_size() < 4,
                             BLOCK=BLOCK, WORDS=WORDS, num_warps=NUM_WARPS)
    nblk = [(s.numel() + BLOCK - 1) // BLOCK for s in g.storage]
    first = list(accumulate([0] + nblk[:-1]))
    T = len(nblk)
    tab = torch.tensor(first + [f + n for f, n in zip(first, nblk)] + list(seg_start) +
                       [s + c for s, c in zip(seg_start, caps)], dtype=torch.long).to(dev)    # one copy
    b0, b1, start, end = tab[:T], tab[T:2 * T], tab[2 * T:3 * T], tab[3 * T:]
    incl = torch.zeros(P + 1, dtype=torch.long, device=dev)          # incl[b]: non-zeros before block b
    torch.cumsum(cnt, 0, out=incl[1:])
    nnz.copy_(incl[b1] - incl[b0])
    tid = g.prog_tid.long()
    dest = start[tid] + incl[:-1] - incl[b0][tid]
    _emit_write_kernel[(P,)](g.prog_tid, g.prog_start, bits, dest, end, out, BLOCK=BLOCK, WORDS=WORDS,
                             num_warps=NUM_WARPS)
