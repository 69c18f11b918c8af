"""The launcher of the fused SparseAdamW step on a device backend: tables, the Adam pass, the projection.

Step 2 of reference.py is one pass over memory for all tensors of a dtype (read p, g, m, v; write p, m,
v), with weight decay folded in for tensors that are not projected. For projected tensors without
protection that have a warm start (a `TopkState` from the previous step), the same pass also builds the
first histogram of the projection, so the projection (topk/phases.py) then costs one more pass (zero the
losers, scale the survivors) plus small bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._schema import AdamHyp, AdamPtrs, Hist, Window
from ..topk.phases import PreHist, Projection, Target, TopkState, run, signature
from ..topk.search import warm_window
from ..topk.sharded import Comm, CommStats, counted, shard_targets
from ..topk.reference import protect_view
from ..topk.tables import TopkKernels, base_and_offsets, block_table
from .reference import AdamWTensor, grad_rms_scale
from .tables import AdamGroup, AdamKernels


def _adam_group(items: Sequence[AdamWTensor], slots: Sequence[int], block: int) -> AdamGroup:
    """The tables of one dtype's tensors; slots[i] is the Window/Hist row of items[i], or -1."""
    roles = [[it.param for it in items], [it.grad for it in items], [it.exp_avg for it in items],
             [it.exp_avg_sq for it in items]]
    based = [base_and_offsets(r) for r in roles]
    ptrs, hyp = [], []
    for pos, (it, slot) in enumerate(zip(items, slots)):
        row = [0] * AdamPtrs.WIDTH
        row[AdamPtrs.P], row[AdamPtrs.G] = it.param.data_ptr(), it.grad.data_ptr()
        row[AdamPtrs.M], row[AdamPtrs.V] = it.exp_avg.data_ptr(), it.exp_avg_sq.data_ptr()
        row[AdamPtrs.NUMEL], row[AdamPtrs.SLOT] = it.param.numel(), slot
        for col, b in zip((AdamPtrs.P_OFF, AdamPtrs.G_OFF, AdamPtrs.M_OFF, AdamPtrs.V_OFF), based):
            row[col] = b[1][pos]
        ptrs.append(row)
        h = [0.0] * AdamHyp.WIDTH
        h[AdamHyp.STEP_SIZE] = it.lr / (1 - it.beta1 ** it.step)
        h[AdamHyp.BC2] = 1 - it.beta2 ** it.step
        h[AdamHyp.EPS], h[AdamHyp.OMB1], h[AdamHyp.BETA2] = it.eps, 1 - it.beta1, it.beta2
        h[AdamHyp.DECAY] = 1.0 if it.k is not None else 1.0 - it.lr * it.weight_decay
        h[AdamHyp.OMB2] = 1 - it.beta2
        hyp.append(h)
    dev = items[0].param.device
    prog_tid, prog_start = block_table(tuple(it.param.numel() for it in items), block, dev)
    return AdamGroup(items[0].param.dtype, tuple(b[0] for b in based), all(b[2] for b in based),
                     torch.tensor(ptrs, dtype=torch.long, device=dev),
                     torch.tensor(hyp, dtype=torch.float32, device=dev), prog_tid, prog_start)


def step_device(items: Sequence[AdamWTensor], grad_rms_norm: bool, adam: AdamKernels, topk: TopkKernels,
                state: TopkState | None, *, comm: Comm | None = None, grad_scale=None) -> CommStats | None:
    """One step (reference.py's order) with one Adam launch per dtype and one projection of all tensors
    (across ranks with `comm`, when the items are shards). `grad_scale` replaces the computed scale."""
    dev = items[0].param.device
    if grad_scale is not None:
        scale = torch.as_tensor(grad_scale, dtype=torch.float32, device=dev).reshape(1)
    elif grad_rms_norm:
        scale = grad_rms_scale([it.grad for it in items], on_device=True).reshape(1)
    else:
        scale = torch.ones(1, dtype=torch.float32, device=dev)
    proj = [i for i, it in enumerate(items) if it.k is not None]
    decays = [1.0 - items[i].lr * items[i].weight_decay for i in proj]
    if comm is not None:
        targets, _ = shard_targets([items[i].param for i in proj], [items[i].k for i in proj],
                                   [items[i].global_shape for i in proj], [items[i].row_offset for i in proj],
                                   [items[i].protect for i in proj], [items[i].name for i in proj], decays)
    else:
        targets = []
        for i, d in zip(proj, decays):
            view, j = protect_view(items[i].param, items[i].protect)
            targets.append(Target(view, int(items[i].k), j, items[i].name, d))
    Tp = len(targets)
    win_rows = [[0] * Window.WIDTH for _ in range(max(Tp, 1))]
    covered = [False] * Tp
    sig = signature(targets)
    centers = state.centers(sig) if state is not None and Tp else None
    if centers is not None:
        for j, (t, (n, _, _)) in enumerate(zip(targets, sig)):
            if centers[j] >= 0 and t.protect is None and 0 < t.k < n:
                covered[j] = True
                lo, shift = warm_window(centers[j])
                win_rows[j][Window.LO], win_rows[j][Window.SHIFT], win_rows[j][Window.ACTIVE] = lo, shift, 1
    win = torch.tensor(win_rows, dtype=torch.long, device=dev)
    hist = torch.zeros(max(Tp, 1), Hist.WIDTH, dtype=torch.long, device=dev)
    slot = {i: j for j, i in enumerate(proj)}
    by_dtype: dict = {}
    for i, it in enumerate(items):
        by_dtype.setdefault(it.param.dtype, []).append(i)
    for idx in by_dtype.values():
        g = _adam_group([items[i] for i in idx], [slot[i] if i in slot and covered[slot[i]] else -1 for i in idx],
                        adam.block)
        if g.prog_tid.numel():
            adam.adam(g, scale, win, hist)
    stats = CommStats() if comm is not None else None
    if Tp:
        pre = PreHist([r[Window.LO] for r in win_rows[:Tp]], [r[Window.SHIFT] for r in win_rows[:Tp]], hist[:Tp],
                      covered)
        proj_ = Projection(targets, topk, state=state, prehist=pre, rank=comm.rank if comm is not None else 0)
        run(proj_, *(counted(comm, stats) if comm is not None else ()))
    return stats
