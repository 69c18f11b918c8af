"""Many SparseWeights at once from the positions of their non-zeros, in a fixed number of launches.

Input: one int64 buffer `pos` cut into one segment per weight, `caps[t]` slots long, whose first `nnz[t]`
slots hold the storage positions of weight t's non-zeros in ascending order (the rest is never read);
`nnz` stays on the device. Weight t is W [N, K]; its storage is W itself (position q = n*K + c) or, for a
transposed view, W^T contiguous (q = c*N + n), so the list arrives in CSR or in CSC order.

Everything below works on all segments together, with keys that keep the segments apart (each weight's
keys start where the previous weight's end), so the number of launches does not grow with the number of
weights:
- CSR order: key n*K + c (a sort only when some weight arrived in CSC order);
- row pointers: a searchsorted of the row starts in the sorted keys;
- the transposed index: a stable sort of the CSR entries by column (rows stay ascending), then the same
  searchsorted for the column starts;
- the longest row and column (ELL needs them on the host): segment maxima of the pointer differences,
  read with the counts in the one device-to-host copy of the build;
- padded rows (ELL) for the weights that ask: one scatter for all of them.
Slots past nnz[t] take the row N and column K of their weight, so every sort puts them last in their
segment and no pointer counts them. The fields of each SparseWeight are views of the shared buffers; they
equal compact()'s (tests/kernels/test_emit.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sparse_format import Ell, SparseWeight

__all__ = ["build_formats"]


@dataclass(frozen=True)
class _Layout:
    """The tables of one call, per weight, per slot of `pos` and per pointer entry (see `_layout`)."""
    starts: list[int]       # first slot of each segment
    rp_at: list[int]        # first row-pointer entry of each weight in the shared pointer buffer
    tp_at: list[int]        # first column-pointer entry of each weight
    seg: Tensor             # int64 [U] weight of each slot
    local: Tensor           # int64 [U] slot - its segment's start
    start_s: Tensor         # int64 [U] its segment's start
    n_s: Tensor             # int64 [U] N of its weight
    k_s: Tensor             # int64 [U] K of its weight
    minor_s: Tensor         # int64 [U] storage row length (K, or N for a transposed view), at least 1
    tr_s: Tensor            # bool [U] the weight arrived in CSC order
    rbase_s: Tensor         # int64 [U] key base of its weight for CSR keys
    cbase_s: Tensor         # int64 [U] key base for CSC keys
    rp_at_s: Tensor         # int64 [U] rp_at of its weight
    tp_at_s: Tensor         # int64 [U] tp_at of its weight
    rq: Tensor              # int64 [sum(N+1)] CSR key of the start of each row (and of the end)
    rq_seg: Tensor          # int64 its weight
    cq: Tensor              # int64 [sum(K+1)] CSC key of the start of each column (and of the end)
    cq_seg: Tensor
    starts_dev: Tensor      # int64 [T]
    any_transposed: bool


_SHAPES: OrderedDict = OrderedDict()
_LAYOUTS: OrderedDict = OrderedDict()


def _cached(cache: OrderedDict, key, make, size: int):
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = make()
        if len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return hit


def _shape_tables(shapes: tuple, transposed: tuple, device: torch.device) -> tuple:
    """Per weight (one row each, on the device): N, K, storage row length, transposed, CSR and CSC key
    bases, first row- and column-pointer entry; the pointer queries; the pointer starts on the host."""
    T = len(shapes)
    ns = torch.tensor([s[0] for s in shapes], dtype=torch.long)
    ks = torch.tensor([s[1] for s in shapes], dtype=torch.long)
    tr = torch.tensor(transposed, dtype=torch.long)
    rbase = _exclusive(ns * ks + ks + 1)          # room for the keys of the real entries and the filler
    cbase = _exclusive((ks + 1) * (ns + 1))
    rp_at, tp_at = _exclusive(ns + 1), _exclusive(ks + 1)
    tab = torch.stack([ns, ks, torch.where(tr != 0, ns, ks).clamp(min=1), tr, rbase, cbase, rp_at, tp_at], 1)
    tid = torch.arange(T)
    rq_seg = torch.repeat_interleave(tid, ns + 1)
    cq_seg = torch.repeat_interleave(tid, ks + 1)
    rq = rbase[rq_seg] + (torch.arange(rq_seg.numel()) - rp_at[rq_seg]) * ks[rq_seg]
    cq = cbase[cq_seg] + (torch.arange(cq_seg.numel()) - tp_at[cq_seg]) * (ns[cq_seg] + 1)
    return (tuple(x.to(device) for x in (tab, rq, rq_seg, cq, cq_seg)), rp_at.tolist(), tp_at.tolist())


def _layout(shapes: Sequence[tuple[int, int]], transposed: Sequence[bool], caps: Sequence[int],
            device: torch.device) -> _Layout:
    """The tables of one call: those of the shapes (cached while the weights keep their shapes) and the
    per-slot ones of these caps (built on the device, kept while the caps stay: after the anneal, every step)."""
    shapes, transposed, caps = tuple(shapes), tuple(bool(x) for x in transposed), tuple(caps)
    (tab, rq, rq_seg, cq, cq_seg), rp_at, tp_at = _cached(_SHAPES, (shapes, transposed, str(device)),
                                                         lambda: _shape_tables(shapes, transposed, device), 8)

    def make() -> _Layout:
        T, U = len(shapes), sum(caps)
        starts = [sum(caps[:t]) for t in range(T)]
        small = torch.tensor([caps, starts], dtype=torch.long).to(device)
        seg = torch.repeat_interleave(torch.arange(T, device=device), small[0], output_size=U)
        col = tab[seg].unbind(1)
        start_s = small[1][seg]
        return _Layout(starts=starts, rp_at=rp_at, tp_at=tp_at, seg=seg,
                       local=torch.arange(U, device=device) - start_s, start_s=start_s, n_s=col[0], k_s=col[1],
                       minor_s=col[2], tr_s=col[3] != 0, rbase_s=col[4], cbase_s=col[5], rp_at_s=col[6],
                       tp_at_s=col[7], rq=rq, rq_seg=rq_seg, cq=cq, cq_seg=cq_seg, starts_dev=small[1],
                       any_transposed=any(transposed))

    return _cached(_LAYOUTS, (shapes, transposed, caps, str(device)), make, 1)      # U-sized: keep one


def _exclusive(x: Tensor) -> Tensor:
    return torch.cumsum(x, 0) - x


def _segment_max(ptr: Tensor, seg: Tensor, T: int) -> Tensor:
    """Per weight, the largest difference of consecutive entries of its part of the shared pointer buffer."""
    out = torch.zeros(T, dtype=torch.long, device=ptr.device)
    if ptr.numel() > 1:
        same = seg[1:] == seg[:-1]
        out.scatter_reduce_(0, seg[1:], torch.where(same, ptr[1:] - ptr[:-1], 0), "amax")
    return out


def build_formats(shapes: Sequence[tuple[int, int]], transposed: Sequence[bool], caps: Sequence[int], pos: Tensor,
                  nnz: Tensor, ell: Sequence[tuple[bool, ...]] | None = None) -> list[SparseWeight]:
    """The SparseWeight of each weight from the segments of `pos` (module docstring). `ell[t]` lists the
    orientations (False: W, True: W^T) whose padded rows to build now, where they fit (ell_fits)."""
    T = len(shapes)
    dev = pos.device
    L = _layout(shapes, transposed, caps, dev)
    valid = L.local < nnz[L.seg]
    major = pos // L.minor_s
    minor = pos - major * L.minor_s
    row = torch.where(valid, torch.where(L.tr_s, minor, major), L.n_s)
    col = torch.where(valid, torch.where(L.tr_s, major, minor), L.k_s)
    rkey = L.rbase_s + row * L.k_s + col
    if L.any_transposed:                          # some segments came in CSC order
        rkey, order = torch.sort(rkey, stable=True)
        row, col = row[order], col[order]
    rp = torch.searchsorted(rkey, L.rq)           # global positions of the row starts
    ckey, perm = torch.sort(L.cbase_s + col * (L.n_s + 1) + row, stable=True)
    tp = torch.searchsorted(ckey, L.cq)
    t_row, t_col = row[perm], col[perm]
    t_perm = perm - L.start_s
    info = torch.stack([nnz, _segment_max(rp, L.rq_seg, T), _segment_max(tp, L.cq_seg, T)]).tolist()
    counts = info[0]
    bad = [t for t in range(T) if counts[t] > caps[t]]
    if bad:
        raise ValueError(f"emit_formats: weight {bad[0]} has {counts[bad[0]]} non-zeros, more than its cap "
                         f"{caps[bad[0]]}")
    cuts = [c for t in range(T) for c in (counts[t], caps[t] - counts[t])]
    parts = lambda x: x.split(cuts)[0::2]          # noqa: E731  each weight's entries: views, one call per field
    row_ptr = (rp - L.starts_dev[L.rq_seg]).to(torch.int32).split([n + 1 for n, _ in shapes])
    t_ptr = (tp - L.starts_dev[L.cq_seg]).to(torch.int32).split([k + 1 for _, k in shapes])
    fields = zip(parts(row), parts(col), parts(row.to(torch.int32)), parts(col.to(torch.int32)),
                 parts(t_row.to(torch.int32)), parts(t_col.to(torch.int32)), parts(t_perm), row_ptr, t_ptr)
    out = [SparseWeight(shape=(n, k), nnz=counts[t], row_ptr=f[7], row=f[0], col=f[1], row32=f[2], col32=f[3],
                        t_ptr=f[8], t_row32=f[4], t_col32=f[5], t_perm=f[6], max_row_nnz=info[1][t],
                        max_col_nnz=info[2][t])
           for t, ((n, k), f) in enumerate(zip(shapes, fields))]
    if ell is not None:
        _build_ells(out, ell, L, valid, row, col, rp, tp, t_row, t_col, t_perm)
    return out


def _build_ells(sws: list[SparseWeight], ell: Sequence[tuple[bool, ...]], L: _Layout, valid: Tensor, row: Tensor,
                col: Tensor, rp: Tensor, tp: Tensor, t_row: Tensor, t_col: Tensor, t_perm: Tensor) -> None:
    """Padded rows of W and/or W^T (sparse_format.Ell) for the weights that ask and fit: one scatter per
    buffer for all of them. Masked-out entries write to one spare slot past the end."""
    want = [[o for o in dict.fromkeys(ell[t]) if sw.ell_fits(o)] for t, sw in enumerate(sws)]
    pairs = [(t, o) for t, os in enumerate(want) for o in os]
    if not pairs:
        return
    dev = row.device
    sizes, fill, base = [], [], {}
    for t, o in pairs:
        base[(t, o)] = sum(sizes)
        sw = sws[t]
        sizes.append(sw.max_col_nnz * sw.shape[1] if o else sw.max_row_nnz * sw.shape[0])
        fill.append(sw.nnz)                       # padded slots point past the values (sparse_format.Ell)
    total = sum(sizes)
    col_buf = torch.zeros(total + 1, dtype=torch.int32, device=dev)
    src_buf = torch.tensor(fill + [0], dtype=torch.long, device=dev).repeat_interleave(
        torch.tensor(sizes + [1], dtype=torch.long, device=dev), output_size=total + 1)
    slot_pos = torch.arange(valid.numel(), device=dev)
    T = len(sws)
    # per orientation: rows of S (W or W^T) per slot, each entry's row and column in S, its CSR position,
    # the global pointers of S and where each weight's pointers start
    for o, p_s, s_row, s_col, src, ptr, at_s, at in ((False, L.n_s, row, col, L.local, rp, L.rp_at_s, L.rp_at),
                                                     (True, L.k_s, t_col, t_row, t_perm, tp, L.tp_at_s, L.tp_at)):
        bases = [base.get((t, o), -1) for t in range(T)]
        if max(bases) < 0:
            continue
        b_s = torch.tensor(bases, dtype=torch.long, device=dev)[L.seg]
        rank = slot_pos - ptr[at_s + s_row]                       # the entry's place in its row of S
        dest = torch.where(valid & (b_s >= 0), b_s + rank * p_s + s_row, total)
        col_buf[dest] = s_col.to(torch.int32)
        src_buf[dest] = src
        row_len = (ptr[1:] - ptr[:-1]).to(torch.int32)
        for t, os in enumerate(want):
            if o in os:
                sw, b = sws[t], base[(t, o)]
                p = sw.shape[1] if o else sw.shape[0]
                slots = sw.max_col_nnz if o else sw.max_row_nnz
                e = b + slots * p
                sw._ell[o] = Ell(col=col_buf[b:e].view(slots, p), src=src_buf[b:e].view(slots, p),
                                 row_len=row_len[at[t]:at[t] + p], slots=slots)
