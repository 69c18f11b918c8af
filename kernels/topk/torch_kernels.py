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


def _keys(g: Group, t: int, q: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(raw |x| bits, selection key) of tensor t in logical order, int64, 1-D; at flat positions q only when
    given. The full keys are cached in g.scratch: the tensors do not change until the apply pass."""
    if q is None and t in g.scratch:
        return g.scratch[t]
    v = g.tensors[t]
    x = v.detach().reshape(-1)
    raw = (x if q is None else x[q]).abs().float().view(torch.int32).long()
    key = raw
    if g.protect[t]:
        cols = v.shape[1]
        r = torch.arange(v.numel(), device=raw.device) // cols if q is None else q // cols
        c = torch.arange(v.numel(), device=raw.device) % cols if q is None else q % cols
        thr, cut = g.thr[g.row_offset[t] + r], g.cut[g.row_offset[t] + r]
        key = raw + ((raw > thr) | ((raw == thr) & (c <= cut))).long() * PROT
    if q is None:
        g.scratch[t] = (raw, key)
    return raw, key


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
            out[t] = _keys(g, t, torch.arange(S, device=out.device) * n // S)[1]

    def hist(self, g: Group, win: Tensor, hist: Tensor) -> None:
        rows = win.tolist()
        for t, (lo, shift, active) in enumerate(r[:Window.WIDTH] for r in rows):
            if not active:
                continue
            raw, key = _keys(g, t)
            # one bincount: index 0 counts the keys below the window, NB + 1 those at or above its top
            counts = torch.bincount(((key - lo) >> shift).clamp_(-1, NB) + 1, minlength=NB + 2)
            hist[t, Hist.BAD] += int((raw >= INF_BITS).sum())
            hist[t, Hist.ABOVE] += counts[NB + 1]
            hist[t, Hist.FIRST_BIN:] += counts[1:NB + 1]

    def apply(self, g: Group, dec: Tensor, decay: Tensor, cnt: Tensor, ckey: Tensor, cidx: Tensor,
              mask_out: bool) -> None:
        for t, row in enumerate(dec.tolist()):
            if not row[Decision.ACTIVE]:
                continue
            v = g.tensors[t]
            _, key = _keys(g, t)
            g.scratch.pop(t, None)                      # the tensor changes now
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
