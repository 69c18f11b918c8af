"""The "torch" kernel set of the top-k projection (tables.TopkKernels): the passes in plain torch ops.

It lets the torch backend run the same phases as the device backends (phases.py), which a run across
ranks needs (the histogram rows are what ranks sum). It reads the group's logical views, so it needs no
pointers and runs on any device. In one process the torch backend uses the faster fast.py instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._schema import INF_BITS, NB, PROT, Decision, Hist, Window
from .tables import Group, TopkKernels


def _keys(g: Group, t: int) -> tuple[Tensor, Tensor]:
    """(raw |x| bits, selection key) of tensor t in logical order, int64, 1-D."""
    v = g.tensors[t]
    raw = v.detach().abs().float().reshape(-1).view(torch.int32).long()
    if not g.protect[t]:
        return raw, raw
    rows, cols = v.shape
    off = g.row_offset[t]
    thr = g.thr[off:off + rows, None]
    cut = g.cut[off:off + rows, None]
    r2 = raw.view(rows, cols)
    col = torch.arange(cols, device=raw.device)
    is_p = (r2 > thr) | ((r2 == thr) & (col <= cut))
    return raw, raw + is_p.reshape(-1).long() * PROT


class TorchTopkKernels(TopkKernels):
    """The passes, one tensor at a time, in torch ops."""

    name = "torch"
    block = 1 << 30         # the block table is not used: one "program" per tensor
    samples = 4096

    def sample(self, g: Group, out: Tensor) -> None:
        S = out.shape[1]
        for t in range(len(g.tensors)):
            n = g.tensors[t].numel()
            if n == 0:
                out[t] = 0
                continue
            q = torch.arange(S, device=out.device) * n // S
            out[t] = _keys(g, t)[1][q]

    def hist(self, g: Group, win: Tensor, hist: Tensor) -> None:
        rows = win.tolist()
        for t, (lo, shift, active) in enumerate(r[:Window.WIDTH] for r in rows):
            if not active:
                continue
            raw, key = _keys(g, t)
            hi = lo + (NB << shift)
            hist[t, Hist.BAD] += int((raw >= INF_BITS).sum())
            hist[t, Hist.ABOVE] += int((key >= hi).sum())
            inside = key[(key >= lo) & (key < hi)]
            hist[t, Hist.FIRST_BIN:] += torch.bincount((inside - lo) >> shift, minlength=NB)

    def apply(self, g: Group, dec: Tensor, decay: Tensor, cnt: Tensor, ckey: Tensor, cidx: Tensor,
              mask_out: bool) -> None:
        for t, row in enumerate(dec.tolist()):
            if not row[Decision.ACTIVE]:
                continue
            v = g.tensors[t]
            _, key = _keys(g, t)
            lo, hi = row[Decision.LO], row[Decision.HI]
            keep = (key >= hi).view(v.shape)
            if mask_out:
                g.masks[t].copy_(keep)
            else:
                v.masked_fill_((key < lo).view(v.shape), 0)
                d = float(decay[t])
                if d != 1.0:
                    v.copy_(torch.where(keep, (v.float() * d).to(v.dtype), v))
            idx = ((key >= lo) & (key < hi)).nonzero().squeeze(1)
            start = row[Decision.CAND_OFFSET] + int(cnt[t])
            ckey[start:start + idx.numel()] = key[idx]
            cidx[start:start + idx.numel()] = idx
            cnt[t] += idx.numel()

    def scatter(self, g: Group, tid: Tensor, idx: Tensor, fac: Tensor, mask_out: bool) -> None:
        for t in torch.unique(tid).tolist():
            sel = tid == t
            v = g.tensors[t]
            at = torch.unravel_index(idx[sel], v.shape)
            f = fac[sel]
            if mask_out:
                g.masks[t][tuple(a[f != 0] for a in at)] = True
            else:
                v[at] = torch.where(f == 0, 0.0, v[at].float() * f).to(v.dtype)
