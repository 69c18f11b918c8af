"""What a top-k kernel set reads and must do: the per-group tables and the `TopkKernels` interface.

A projection splits its tensors into groups of one dtype; each pass is one launch per group over every
tensor of the group. A group holds the tensors twice: as logical views (what the torch kernel set reads)
and as storage-order tensors addressed through the `Meta` table (_schema.py: pointer, element offset
from the group's base tensor, rows, cols, layout, protection), which the Triton and CUDA kernel sets read
with one program (block) per `block` elements of one tensor (`prog_tid`, `prog_start`).

Selection keys: the float32 bit pattern of |w| as an integer, which orders like |w| (+0 and -0 give 0);
an entry protected by its row's top-j gets PROT = 2**31 added (protection.py says which are protected).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._schema import Meta


class TopkKernels(ABC):
    """The passes of a projection, for every tensor of one group `g` at once (tables in _schema.py)."""

    name: str = ""
    block: int = 4096       # elements per program in the block table
    samples: int = 4096     # keys per tensor that `sample` draws

    @abstractmethod
    def sample(self, g: Group, out: Tensor) -> None:
        """out int64 [T, S]: the keys at S evenly spaced memory positions of each tensor."""

    @abstractmethod
    def hist(self, g: Group, win: Tensor, hist: Tensor) -> None:
        """Add, for each tensor with an active `win` row (Window), its keys to its `hist` row (Hist):
        the count at or above the window's top, NaN/inf entries, and the bins of the window. Reads only."""

    @abstractmethod
    def apply(self, g: Group, dec: Tensor, decay: Tensor, cnt: Tensor, ckey: Tensor, cidx: Tensor,
              mask_out: bool) -> None:
        """For each tensor with an active `dec` row (Decision): zero keys below LO, multiply keys at or above
        HI by decay[t] (or, with mask_out, write the mask of keys >= HI), and list the keys in [LO, HI)
        with their logical flat index at ckey/cidx[CAND_OFFSET + cnt[t]++] (any order)."""

    @abstractmethod
    def scatter(self, g: Group, tid: Tensor, idx: Tensor, fac: Tensor, mask_out: bool) -> None:
        """Multiply the listed entries (tensor tid, logical flat index idx) by fac (0: zero them); with
        mask_out, set the mask bit of the entries whose fac is not 0."""


@dataclass
class Group:
    """One dtype group's tensors and tables."""

    dtype: torch.dtype
    tensors: list[Tensor]   # logical views (contiguous copies of views the pointer kernels cannot read)
    storage: list[Tensor]   # the same tensors in storage order (a transposed view's .t())
    transposed: list[bool]
    protect: list[int | None]
    masks: list[Tensor]     # mask mode: bool outputs, logical views; else empty
    base: Tensor            # the storage tensor with the lowest data pointer: Triton addresses base + offset
    aligned: bool           # every tensor starts 16-byte aligned relative to base (vector loads)
    meta: Tensor            # int64 [T, Meta.WIDTH]
    prog_tid: Tensor        # int32 [P]
    prog_start: Tensor      # int64 [P]
    row_offset: list[int]   # first row of each protected tensor in thr/cut
    thr: Tensor = field(default=None)   # int64: per-row protection threshold keys of all protected tensors
    cut: Tensor = field(default=None)   # int64: per-row last protected column among ties
    scratch: dict = field(default_factory=dict)   # a kernel set's per-projection cache


_BLOCK_TABLES: OrderedDict = OrderedDict()


def block_table(ns: tuple[int, ...], block: int, device) -> tuple[Tensor, Tensor]:
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


def base_and_offsets(ts: Sequence[Tensor]) -> tuple[Tensor, list[int], bool]:
    """The tensor with the lowest address, each tensor's element offset from it, and whether all are
    16-byte aligned (base included)."""
    base = min(ts, key=lambda t: t.data_ptr())
    b, es = base.data_ptr(), base.element_size()
    offsets = [(t.data_ptr() - b) // es for t in ts]
    aligned = b % 16 == 0 and all((t.data_ptr() - b) % 16 == 0 for t in ts)
    return base, offsets, aligned


def _layout(w: Tensor):
    """(storage tensor, rows, cols, transposed) in the form the kernels read, or None if w needs a copy."""
    if w.is_contiguous():
        rows, cols = (w.shape[0], w.shape[1]) if w.ndim == 2 else (1, w.numel())
        return w, rows, cols, False
    if w.ndim == 2 and w.stride(0) == 1 and w.stride(1) == w.shape[0]:
        return w.t(), w.shape[0], w.shape[1], True
    return None


def build_group(views: Sequence[Tensor], protect: Sequence[int | None], block: int, mask_mode: bool
                ) -> tuple[Group, list[tuple[Tensor, Tensor]]]:
    """The group of `views` (one dtype, one device) and the (view, copy) pairs to copy back at the end.

    The protection arrays (thr, cut) are filled in later by `set_protection`.
    """
    dev = views[0].device
    tensors, storage, rows, cols, transposed, copies = [], [], [], [], [], []
    for w in views:
        lay = _layout(w)
        if lay is None:
            tmp = w.contiguous()
            copies.append((w, tmp))
            w, lay = tmp, _layout(tmp)
        tensors.append(w)
        storage.append(lay[0]); rows.append(lay[1]); cols.append(lay[2]); transposed.append(lay[3])
    row_offset, off = [], 0
    for w, j in zip(tensors, protect):
        row_offset.append(off)
        off += w.shape[0] if j else 0
    outs = [torch.zeros(s.shape, dtype=torch.bool, device=dev) for s in storage] if mask_mode else []
    base, offsets, aligned = base_and_offsets(storage)
    table = [[0] * Meta.WIDTH for _ in views]
    for i, row in enumerate(table):
        row[Meta.PTR] = storage[i].data_ptr()
        row[Meta.NUMEL] = storage[i].numel()
        row[Meta.ROWS], row[Meta.COLS], row[Meta.TRANSPOSED] = rows[i], cols[i], int(transposed[i])
        row[Meta.PROTECTED], row[Meta.ROW_OFFSET] = int(bool(protect[i])), row_offset[i]
        row[Meta.MASK_PTR] = outs[i].data_ptr() if mask_mode else 0
        row[Meta.OFFSET] = offsets[i]
    meta = torch.tensor(table, dtype=torch.long, device=dev)
    prog_tid, prog_start = block_table(tuple(s.numel() for s in storage), block, dev)
    masks = [o.t() if tr else o for o, tr in zip(outs, transposed)]
    grp = Group(views[0].dtype, tensors, storage, transposed, list(protect), masks, base, aligned, meta,
                prog_tid, prog_start, row_offset)
    return grp, copies


def set_protection(g: Group, thresholds: Sequence[tuple[Tensor, Tensor] | None]) -> None:
    """Concatenate the per-row (threshold key, cut) of the group's protected tensors into g.thr, g.cut."""
    dev = g.meta.device
    thr = [t for t, j in zip(thresholds, g.protect) if j]
    g.thr = torch.cat([t[0] for t in thr]) if thr else torch.zeros(1, dtype=torch.long, device=dev)
    g.cut = torch.cat([t[1] for t in thr]) if thr else torch.zeros(1, dtype=torch.long, device=dev)
