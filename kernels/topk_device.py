"""Exact batched top-k projection on a GPU (or the Triton interpreter): the bookkeeping around the passes.

A backend's kernel set (topk_triton.TritonTopkKernels, or the CUDA extension's) provides four streaming
passes over every tensor of one dtype at once; this module chooses windows, reads histograms and settles
ties. Per tensor, with keys as in topk_triton.py:
1. Window. The first guess is the previous call's threshold (`TopkState`, warm start) +-1/16; else a
   window around the threshold of S sampled keys; else the whole key range.
2. `hist` pass: count the keys above the window and histogram those inside it (NB bins of 2**shift keys);
   NaN/inf are counted too and raise before anything is written. The bin b holding the k-th largest key
   follows from a cumulative sum. If the k-th key is outside the window, the next guess is tried; if bin b
   holds too many keys, the window shrinks to bin b and the pass repeats (at most 3 times from the full
   range, since 2048**3 > 2**32).
3. `apply` pass: keys above bin b survive (times the weight-decay factor), keys below are zeroed, keys in
   bin b are listed with their logical flat index.
4. The listed keys are sorted (key descending, index ascending) per tensor, the first `need` survive,
   and `scatter` fixes the others. Ties therefore go to the lowest flat index, as in topk.py.
Each pass is one launch per dtype; the per-row protection thresholds (topk_torch.row_protect) are computed
per protected tensor beforehand. The bookkeeping runs on the host (numpy) on a copy of the histograms, so a
call costs one device-to-host copy per pass instead of dozens of tiny launches.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .topk import _DTYPES, check_finite
from .topk_torch import row_protect

log = logging.getLogger(__name__)

NB = 2048
LOG_NB = 11
KEY_INF = 1 << 40                 # above every key: "keep nothing"
FULL_SHIFT = 32 - LOG_NB          # a window [0, 2**32) covers every key, protected ones included
WARM_HALF = 3 << 19               # +-(1/16 relative) in key units is about 2**23 / 16 / ln 2 < 3 * 2**19
HOST_CANDIDATES = 1 << 22         # candidate lists up to this size are settled on the host
CAND_CAP = 1 << 16                # listed candidates per tensor before the window is refined


class TopkState:
    """Warm start for repeated projections of the same tensors: remembers each tensor's threshold key."""

    def __init__(self) -> None:
        self.signature: tuple | None = None
        self.center: list[int] | None = None     # per tensor; -1 = unknown

    def centers(self, signature: tuple) -> list[int] | None:
        return self.center if self.signature == signature else None

    def update(self, signature: tuple, center: list[int]) -> None:
        self.signature, self.center = signature, list(center)


_BLOCK_TABLES: OrderedDict = OrderedDict()


def _block_table(ns: tuple[int, ...], block: int, device) -> tuple[Tensor, Tensor]:
    """Per program: tensor id (int32) and first element (int64), cached by sizes."""
    key = (ns, block, str(device))
    hit = _BLOCK_TABLES.get(key)
    if hit is not None:
        _BLOCK_TABLES.move_to_end(key)
        return hit
    nblk = torch.tensor([(n + block - 1) // block for n in ns], dtype=torch.long)
    tid = torch.repeat_interleave(torch.arange(len(ns)), nblk)
    first = torch.repeat_interleave(torch.cumsum(nblk, 0) - nblk, nblk)
    start = (torch.arange(tid.numel()) - first) * block
    table = (tid.to(torch.int32).to(device), start.to(device))
    _BLOCK_TABLES[key] = table
    if len(_BLOCK_TABLES) > 32:
        _BLOCK_TABLES.popitem(last=False)
    return table


def _layout(w: Tensor):
    """(storage tensor, rows, cols, transposed) in the form the kernels read, or None if w needs a copy."""
    if w.is_contiguous():
        rows, cols = (w.shape[0], w.shape[1]) if w.ndim == 2 else (1, w.numel())
        return w, rows, cols, 0
    if w.ndim == 2 and w.stride(0) == 1 and w.stride(1) == w.shape[0]:
        return w.t(), w.shape[0], w.shape[1], 1
    return None


def fit_window(lo: int, hi: int) -> tuple[int, int]:
    """(lo', shift): the smallest shift whose aligned window [lo', lo' + NB << shift) covers [lo, hi)."""
    lo, hi = max(0, int(lo)), max(int(lo) + 1, int(hi))
    shift = max(0, (hi - lo - 1).bit_length() - LOG_NB)
    while (lo >> shift << shift) + (NB << shift) < hi:
        shift += 1
    return lo >> shift << shift, shift


def warm_window(center: int) -> tuple[int, int]:
    """The warm-start window (lo, shift) around a threshold key (center >= 0)."""
    return fit_window(center - WARM_HALF, center + WARM_HALF)


@dataclass
class Group:
    """One dtype group's tables, as the kernel sets take them."""

    base: Tensor            # the tensor with the lowest data pointer: Triton addresses base + offset
    aligned: bool           # every tensor starts 16-byte aligned relative to base (vector loads)
    dtype: torch.dtype
    meta: Tensor            # int64 [T, 12], see topk_triton.py
    thr: Tensor             # int64: per-row protection thresholds (keys), all protected tensors
    cut: Tensor             # int64: per-row last protected column among ties
    prog_tid: Tensor        # int32 [P]
    prog_start: Tensor      # int64 [P]


def base_and_offsets(ts: Sequence[Tensor]) -> tuple[Tensor, list[int], bool]:
    """The tensor with the lowest address, each tensor's element offset from it, and whether all are
    16-byte aligned (base included)."""
    base = min(ts, key=lambda t: t.data_ptr())
    b, es = base.data_ptr(), base.element_size()
    offsets = [(t.data_ptr() - b) // es for t in ts]
    aligned = b % 16 == 0 and all((t.data_ptr() - b) % 16 == 0 for t in ts)
    return base, offsets, aligned


class PreHist:
    """A first `hist` pass made elsewhere (the optimizer's Adam pass): per tensor its window (host lists
    lo, shift), the histograms and stats on the device, and which tensors it covered."""

    def __init__(self, lo: list[int], shift: list[int], hist: Tensor, stats: Tensor, covered: list[bool]):
        self.lo, self.shift, self.hist, self.stats, self.covered = lo, shift, hist, stats, covered

    def rows(self, idx: list[int]) -> PreHist:
        sel = torch.tensor(idx, device=self.hist.device)
        return PreHist([self.lo[i] for i in idx], [self.shift[i] for i in idx], self.hist[sel], self.stats[sel],
                       [self.covered[i] for i in idx])


def _check_dtype_shape(w: Tensor, name: str, j) -> None:
    if w.dtype not in _DTYPES:
        raise ValueError(f"top-k projection: tensor {name!r} has dtype {w.dtype}; want one of {_DTYPES}")
    if j is not None and j > 0 and w.ndim != 2:
        raise ValueError(f"top-k projection: protect_per_row needs a 2-D tensor, {name!r} is {tuple(w.shape)}")


def project_device_(tensors: Sequence[Tensor], ks: Sequence[int], protect: Sequence, names: Sequence[str],
                    kernels, *, state: TopkState | None = None, decay: Sequence[float] | None = None,
                    masks: list | None = None, prehist: PreHist | None = None) -> None:
    """Project `tensors` in place (or, with `masks` a list, fill it with bool masks and leave them alone).

    `decay[i]` multiplies the survivors of tensors[i] (weight decay after the projection). `prehist` holds a
    first `hist` pass that was already made (fused into the optimizer's Adam pass) for some tensors.
    """
    for w, j, name in zip(tensors, protect, names):
        _check_dtype_shape(w, name, j)
    if masks is not None:
        masks.extend([None] * len(tensors))
    if not tensors:
        return
    groups: dict = {}
    for i, w in enumerate(tensors):
        groups.setdefault((w.dtype, w.device), []).append(i)
    sig = tuple((w.numel(), w.dtype, w.device) for w in tensors)
    centers = state.centers(sig) if state is not None else None
    new_center = [-1] * len(tensors)
    for idx in groups.values():
        out_center, out_masks = _project_group(
            [tensors[i] for i in idx], [int(ks[i]) for i in idx], [protect[i] for i in idx],
            [names[i] for i in idx], kernels, [centers[i] for i in idx] if centers is not None else None,
            [1.0 if decay is None else float(decay[i]) for i in idx], masks is not None,
            prehist.rows(idx) if prehist is not None else None)
        for pos, i in enumerate(idx):
            new_center[i] = out_center[pos]
            if masks is not None:
                masks[i] = out_masks[pos]
    if state is not None:
        state.update(sig, new_center)


def _prepare(ws, prots, K, mask_mode):
    """Layouts, protection thresholds, the tensor table and the block table of one dtype group."""
    dev = ws[0].device
    views, copies, rows_l, cols_l, tr_l = [], [], [], [], []
    for w in ws:
        lay = _layout(w)
        if lay is None:
            tmp = w.contiguous()
            copies.append((w, tmp))
            lay = _layout(tmp)
        views.append(lay[0]); rows_l.append(lay[1]); cols_l.append(lay[2]); tr_l.append(lay[3])
    thr_parts, cut_parts, rowoff, off = [], [], [], 0
    for w, j in zip(ws, prots):
        rowoff.append(off)
        if j:
            thr, cut, _ = row_protect(w, j)
            thr_parts.append(thr.view(torch.int32).long()); cut_parts.append(cut)
            off += thr.numel()
    thr_t = torch.cat(thr_parts) if thr_parts else torch.zeros(1, dtype=torch.long, device=dev)
    cut_t = torch.cat(cut_parts) if cut_parts else torch.zeros(1, dtype=torch.long, device=dev)
    outs = [torch.zeros(v.shape, dtype=torch.bool, device=dev) for v in views] if mask_mode else []
    base, offsets, aligned = base_and_offsets(views)
    meta = torch.tensor([[views[i].data_ptr(), views[i].numel(), rows_l[i], cols_l[i], tr_l[i],
                          1 if prots[i] else 0, rowoff[i], outs[i].data_ptr() if mask_mode else 0, offsets[i],
                          0, 0, 0] for i in range(len(ws))], dtype=torch.long, device=dev)
    prog_tid, prog_start = _block_table(tuple(w.numel() for w in ws), K.block, dev)
    grp = Group(base, aligned, ws[0].dtype, meta, thr_t, cut_t, prog_tid, prog_start)
    return grp, copies, outs, tr_l


WARM, SAMPLE, FULL, REFINE, DECIDED, DONE = 0, 1, 2, 3, 9, -1


def _project_group(ws, ks, prots, names, K, centers, decays, mask_mode, pre):
    dev = ws[0].device
    T = len(ws)
    grp, copies, outs, tr_l = _prepare(ws, prots, K, mask_mode)
    ns = [w.numel() for w in ws]
    ks = [max(0, min(k, n)) for k, n in zip(ks, ns)]
    stage = [DECIDED if k in (0, n) else (WARM if centers is not None and centers[i] >= 0 else SAMPLE)
             for i, (k, n) in enumerate(zip(ks, ns))]
    covered = [pre is not None and pre.covered[i] and stage[i] != DECIDED for i in range(T)]
    lo, shift = [0] * T, [FULL_SHIFT] * T
    fin_lo, fin_shift, need_in, cnt_bin = [0] * T, [0] * T, [0] * T, [0] * T
    hist = torch.empty(T, NB, dtype=torch.int32, device=dev)
    stats = torch.empty(T, 4, dtype=torch.long, device=dev)
    k_np = np.array(ks, dtype=np.int64)
    for it in range(12):
        first = it == 0
        todo = list(range(T)) if first else [i for i in range(T) if stage[i] in (WARM, SAMPLE, FULL, REFINE)]
        if not todo:
            break
        cov = [first and covered[i] for i in range(T)]
        launch = [i for i in todo if not cov[i]]
        for i in launch:
            if stage[i] == WARM:
                lo[i], shift[i] = warm_window(centers[i])
            elif stage[i] in (FULL, DECIDED):
                lo[i], shift[i] = 0, FULL_SHIFT
        sampled = [i for i in launch if stage[i] == SAMPLE]
        if sampled:
            for i, (a, b) in zip(sampled, _sample_windows(K, grp, ks, ns, sampled)):
                lo[i], shift[i] = a, b
        for i in range(T):
            if cov[i]:
                lo[i], shift[i] = pre.lo[i], pre.shift[i]
        if launch:
            on = set(launch)
            win = torch.tensor([[lo[i], shift[i], 1 if i in on else 0, 0] for i in range(T)], dtype=torch.long,
                               device=dev)
            hist.zero_(); stats.zero_()
            K.hist(grp, win, hist, stats)
        h = hist.cpu().numpy() if launch else np.zeros((T, NB), dtype=np.int32)
        st = stats.cpu().numpy() if launch else np.zeros((T, 4), dtype=np.int64)
        if any(cov):
            c = np.array(cov)
            h[c] = pre.hist.cpu().numpy()[c]
            st[c] = pre.stats.cpu().numpy()[c]
        if first:
            for i in range(T):
                if st[i, 1] > 0:
                    check_finite(ws[i], names[i])
                    raise ValueError(f"top-k projection: tensor {names[i]!r} contains NaN or inf")
        above = st[:, 0]
        need = k_np - above
        rc = np.cumsum(h[:, ::-1].astype(np.int64), axis=1)           # keys in bins >= NB-1-j
        j = np.argmax(rc >= need[:, None], axis=1)
        for i in todo:
            if stage[i] == DECIDED:
                continue
            if not (1 <= need[i] <= rc[i, -1]):                          # the k-th key is outside the window
                if stage[i] in (FULL, REFINE):
                    raise RuntimeError(f"top-k projection: internal error, no bin found for {names[i]!r}")
                stage[i] += 1
                continue
            b = NB - 1 - int(j[i])
            greater = int(above[i]) + (int(rc[i, j[i] - 1]) if j[i] > 0 else 0)
            cnt = int(h[i, b])
            bin_lo = lo[i] + (b << shift[i])
            if cnt > CAND_CAP and shift[i] > 0:                            # too many candidates: zoom in
                lo[i], shift[i], stage[i] = bin_lo, max(0, shift[i] - LOG_NB), REFINE
            else:
                fin_lo[i], fin_shift[i], need_in[i], cnt_bin[i], stage[i] = bin_lo, shift[i], ks[i] - greater, cnt, DONE
    else:
        raise RuntimeError("top-k projection: internal error, the threshold search did not converge")
    return _finish(ws, ks, ns, stage, fin_lo, fin_shift, need_in, cnt_bin, decays, grp, K, outs, tr_l, copies,
                   mask_mode)


def _sample_windows(K, grp, ks, ns, sampled):
    """Windows (lo, shift) around the threshold estimated from S sampled keys, for tensors `sampled`."""
    T = grp.meta.shape[0]
    S = K.samples
    samp = torch.empty(T, S, dtype=torch.long, device=grp.meta.device)
    K.sample(grp, samp)
    s = torch.sort(samp[torch.tensor(sampled, device=samp.device)], dim=1).values.cpu().numpy()
    out = []
    for row, i in zip(s, sampled):
        r = ks[i] * S / max(1, ns[i])
        margin = 4.0 * (r + 1.0) ** 0.5 + 4.0
        pos_lo, pos_hi = int(np.floor(S - r - margin)), int(np.ceil(S - r + margin))
        lo = 0 if pos_lo <= 0 else int(row[pos_lo])
        hi = (1 << 32) if pos_hi >= S - 1 else int(row[pos_hi]) + 1
        out.append(fit_window(lo, hi))
    return out


def _finish(ws, ks, ns, stage, fin_lo, fin_shift, need_in, cnt_bin, decays, grp, K, outs, tr_l, copies,
            mask_mode):
    dev = ws[0].device
    T = len(ws)
    rows, center = [], []
    coff = np.concatenate([[0], np.cumsum(cnt_bin)[:-1]]).astype(np.int64)
    for i in range(T):
        if stage[i] == DECIDED:
            edge = KEY_INF if ks[i] == 0 else 0
            active = not (ks[i] == ns[i] and decays[i] == 1.0 and not mask_mode)
            rows.append([edge, edge, 0, int(active)])
            center.append(-1)
        else:
            rows.append([fin_lo[i], fin_lo[i] + (1 << fin_shift[i]), int(coff[i]), 1])
            center.append(fin_lo[i])
    M = int(sum(cnt_bin))
    fin = torch.tensor(rows, dtype=torch.long, device=dev)
    decay_t = torch.tensor(decays, dtype=torch.float32, device=dev)
    cnt = torch.zeros(T, dtype=torch.int32, device=dev)
    ckey = torch.empty(max(M, 1), dtype=torch.long, device=dev)
    cidx = torch.empty(max(M, 1), dtype=torch.long, device=dev)
    K.apply(grp, fin, decay_t, cnt, ckey, cidx, mask_mode)
    if M > 0:
        _settle_candidates(grp, K, ckey[:M], cidx[:M], cnt_bin, coff, need_in, decays, mask_mode)
    for w, tmp in copies:
        w.copy_(tmp)
    masks = [o.t() if tr else o for o, tr in zip(outs, tr_l)] if mask_mode else None
    return center, masks


def _settle_candidates(grp, K, ckey, cidx, cnt_bin, coff, need_in, decays, mask_mode):
    """Rank each tensor's listed keys (key descending, index ascending); fix the losers (and the winners'
    decay, or their mask bit) with one scatter launch."""
    dev = ckey.device
    M = ckey.numel()
    seg = np.repeat(np.arange(len(cnt_bin)), cnt_bin)
    if M <= HOST_CANDIDATES:
        ck, ci = ckey.cpu().numpy(), cidx.cpu().numpy()
        order = np.lexsort((ci, -ck, seg))
        ci = ci[order]
    else:                                              # huge tie groups (e.g. all-zero tensors): sort on device
        o = torch.argsort(cidx, stable=True)
        o = o[torch.argsort(ckey[o], descending=True, stable=True)]
        o = o[torch.argsort(torch.from_numpy(seg).to(dev)[o], stable=True)]
        ci = cidx[o].cpu().numpy()
    rank = np.arange(M) - coff[seg]                     # seg is sorted by construction
    win = rank < np.asarray(need_in, dtype=np.int64)[seg]
    dec = np.asarray(decays, dtype=np.float32)[seg]
    if mask_mode:
        sel, fac = win, np.ones(M, dtype=np.float32)
    else:
        sel = ~win | (dec != 1.0)
        fac = np.where(win, dec, 0.0).astype(np.float32)
    if sel.any():
        K.scatter(grp, torch.from_numpy(seg[sel].astype(np.int64)).to(dev), torch.from_numpy(ci[sel]).to(dev),
                  torch.from_numpy(fac[sel]).to(dev), mask_mode)
