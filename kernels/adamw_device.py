"""The fused SparseAdamW step on a device backend: tables, the Adam pass, then the batched projection."""

from __future__ import annotations

import torch

from .adamw import AdamWTensor, grad_rms_scale, protect_view
from .dispatch import kernel_set
from .topk_device import NB, PreHist, _block_table, base_and_offsets, project_device_, warm_window


def step_device(items: list[AdamWTensor], grad_rms_norm: bool, backend: str, state) -> None:
    """One step (adamw.py's order) with one Adam launch per dtype and one projection per pass."""
    K = kernel_set(backend)
    dev = items[0].param.device
    if grad_rms_norm:
        scale = grad_rms_scale([it.grad for it in items], on_device=True).reshape(1)
    else:
        scale = torch.ones(1, dtype=torch.float32, device=dev)
    proj = [i for i, it in enumerate(items) if it.k is not None]
    views, ks, prots, names, decays = [], [], [], [], []
    for i in proj:
        it = items[i]
        view, j = protect_view(it.param, it.protect)
        views.append(view); ks.append(max(0, min(int(it.k), it.param.numel()))); prots.append(j)
        names.append(it.name); decays.append(1.0 - it.lr * it.weight_decay)
    Tp = len(proj)
    win_rows = [[0, 0, 0, 0] for _ in range(max(Tp, 1))]
    covered = [False] * Tp
    sig = tuple((v.numel(), v.dtype, v.device) for v in views)
    centers = state.centers(sig) if state is not None and Tp else None
    if centers is not None:
        for j in range(Tp):
            if centers[j] >= 0 and prots[j] is None and 0 < ks[j] < views[j].numel():
                covered[j] = True
                win_rows[j][:3] = [*warm_window(centers[j]), 1]
    win = torch.tensor(win_rows, dtype=torch.long, device=dev)
    hist = torch.zeros(max(Tp, 1), NB, dtype=torch.int32, device=dev)
    stats = torch.zeros(max(Tp, 1), 4, dtype=torch.long, device=dev)
    slot = {i: j for j, i in enumerate(proj)}
    groups: dict = {}
    for i, it in enumerate(items):
        groups.setdefault(it.param.dtype, []).append(i)
    for dtype, idx in groups.items():
        ptrs, hyp = [], []
        roles = [[items[i].param for i in idx], [items[i].grad for i in idx], [items[i].exp_avg for i in idx],
                 [items[i].exp_avg_sq for i in idx]]
        based = [base_and_offsets(r) for r in roles]
        bases = tuple(b[0] for b in based)
        aligned = all(b[2] for b in based)
        for pos, i in enumerate(idx):
            it = items[i]
            projected = i in slot
            bc1 = 1 - it.beta1 ** it.step
            bc2 = 1 - it.beta2 ** it.step
            dec = 1.0 if projected else 1.0 - it.lr * it.weight_decay
            ptrs.append([it.param.data_ptr(), it.grad.data_ptr(), it.exp_avg.data_ptr(), it.exp_avg_sq.data_ptr(),
                         it.param.numel(), slot[i] if projected and covered[slot[i]] else -1]
                        + [b[1][pos] for b in based] + [0, 0])
            hyp.append([it.lr / bc1, bc2, it.eps, 1 - it.beta1, it.beta2, dec, 1 - it.beta2, 0.0])
        ptrs_t = torch.tensor(ptrs, dtype=torch.long, device=dev)
        hyp_t = torch.tensor(hyp, dtype=torch.float32, device=dev)
        prog_tid, prog_start = _block_table(tuple(items[i].param.numel() for i in idx), K.block, dev)
        if prog_tid.numel():
            K.adam(prog_tid, prog_start, bases, aligned, ptrs_t, hyp_t, scale, win, hist, stats, dtype)
    if Tp:
        pre = PreHist([r[0] for r in win_rows[:Tp]], [r[1] for r in win_rows[:Tp]], hist[:Tp], stats[:Tp], covered)
        project_device_(views, ks, prots, names, K, state=state, decay=decays, prehist=pre)
