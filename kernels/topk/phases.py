"""The batched exact top-k projection as explicit phases, for any kernel set (tables.TopkKernels).

    protection -> histogram -> [reduce] -> decide -> ... (until every threshold is decided) -> apply -> settle

`Projection` holds one projection of many tensors; `run` drives its phases. Per tensor (keys: tables.py;
the host side of the search: search.py):
1. Window. The first guess is the previous call's threshold (`TopkState`, warm start) +-1/16; else a
   window around the threshold of S sampled keys; else the whole key range.
2. `histogram`: count the keys above the window and histogram those inside it (NB bins of 2**shift
   keys); NaN/inf are counted too. Its rows (one per tensor still searching, int64) are what a
   multi-process run sums across ranks: the `reduce` of `run`, one call per pass for all tensors.
3. `decide`: raise on NaN/inf (before anything is written); find the bin b holding the k-th largest key
   from a cumulative sum. If the k-th key is outside the window, the next guess is tried; if bin b holds
   too many keys, the window shrinks to bin b and the pass repeats (at most 3 times from the full range,
   since 2048**3 > 2**32).
4. `apply`: keys above bin b survive (times the weight-decay factor), keys below are zeroed, keys in bin b
   are listed with their logical flat index.
5. `settle`: the listed keys are sorted (key descending, index ascending) per tensor, the first `need`
   survive, and `scatter` fixes the others. Ties therefore go to the lowest flat index, as in reference.py.
Each pass is one launch per dtype group. The bookkeeping runs on the host (numpy) on a copy of the
histogram rows, so a call costs one device-to-host copy per pass instead of dozens of tiny launches.
Across ranks (targets with a `shard`), `protection` and `apply` also return small payloads to all-gather
(column protection; shares of a tie group), ranks.py turns them into per-rank decisions, and the search
refines to single keys. docs/kernels.md walks through the phases, the tables and the multi-rank case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._schema import Decision, Hist, Window
from .protection import row_protect_keys
from .ranks import Shard, column_protect_payload, merge_column_protect, tie_payload, tie_quota
from .reference import check_dtype_shape, check_finite
from .search import FULL_SHIFT, SEARCHING, Search, Stage, decide_one, sample_windows, warm_window
from .tables import Group, TopkKernels, build_group, set_protection

KEY_INF = 1 << 40                 # above every key: "keep nothing"
HOST_CANDIDATES = 1 << 22         # candidate lists up to this size are settled on the host
MAX_PASSES = 12


class TopkState:
    """Warm start for repeated projections of the same tensors: remembers each tensor's threshold key."""

    def __init__(self) -> None:
        self.signature: tuple | None = None
        self.center: list[int] | None = None     # per tensor; -1 = unknown

    def centers(self, signature: tuple) -> list[int] | None:
        return self.center if self.signature == signature else None

    def update(self, signature: tuple, center: list[int]) -> None:
        self.signature, self.center = signature, list(center)


@dataclass
class Target:
    """One tensor of a projection: keep its k largest keys (protection per row of `view`)."""

    view: Tensor
    k: int
    protect: int | None = None
    name: str = "tensor"
    decay: float = 1.0          # survivors are multiplied by it (weight decay after the projection)
    shard: Shard | None = None  # set when `view` is one rank's part of the whole tensor (ranks.py)


@dataclass
class PreHist:
    """A first histogram pass made elsewhere (the fused Adam pass), in target order: each target's window
    and Hist row (int64 [T, Hist.WIDTH], on the device), and whether that pass covered the target."""

    lo: list[int]
    shift: list[int]
    hist: Tensor
    covered: list[bool]


def signature(targets: Sequence[Target]) -> tuple:
    """What a TopkState's thresholds are valid for: each tensor's whole size, dtype and device."""
    return tuple((t.shard.numel if t.shard is not None else t.view.numel(), t.view.dtype, t.view.device)
                 for t in targets)


class Projection:
    """One projection of many tensors; call its phases through `run` (see the module docstring).

    `mask_mode`: leave the tensors alone and return bool masks. `prehist`: a first histogram pass already
    made for some targets. `state`: warm start, updated at the end. Targets with a `shard` are this rank's
    parts of tensors sharded across ranks (all targets or none); `rank` is then this rank's index in the
    gathers, and k is over the whole tensor.
    """

    def __init__(self, targets: Sequence[Target], kernels: TopkKernels, *, state: TopkState | None = None,
                 mask_mode: bool = False, prehist: PreHist | None = None, rank: int = 0):
        for t in targets:
            check_dtype_shape(t.view, t.name, t.protect)
        if len({t.view.device for t in targets}) > 1:
            raise ValueError("top-k projection: every tensor of one call must be on one device")
        self.sharded = bool(targets) and targets[0].shard is not None
        if any((t.shard is not None) != self.sharded for t in targets):
            raise ValueError("top-k projection: either every tensor of one call is sharded or none is")
        by_dtype: dict = {}
        for i, t in enumerate(targets):
            by_dtype.setdefault(t.view.dtype, []).append(i)
        self.order = [i for idx in by_dtype.values() for i in idx]       # internal position -> caller's
        self.K, self.mask_mode, self.state, self.rank = kernels, mask_mode, state, rank
        self.signature = signature(targets)
        numel = [n for n, _, _ in self.signature]
        centers = state.centers(self.signature) if state is not None else None
        self.targets = [targets[i] for i in self.order]
        self.search = []
        for i in self.order:
            n = numel[i]
            k = max(0, min(int(targets[i].k), n))
            center = centers[i] if centers is not None else -1
            guess = Stage.FULL if self.sharded else Stage.SAMPLE
            stage = Stage.DECIDED if k in (0, n) else (Stage.WARM if center >= 0 else guess)
            self.search.append(Search(k, n, stage, center))
        self.pre = None
        if prehist is not None:
            self.pre = (prehist.hist[torch.tensor(self.order, device=prehist.hist.device)],
                        [(prehist.lo[i], prehist.shift[i], prehist.covered[i]) for i in self.order])
        self.groups: list[tuple[slice, Group]] = []
        self.copies: list[tuple[Tensor, Tensor]] = []
        start = 0
        for idx in by_dtype.values():
            part = self.targets[start:start + len(idx)]
            g, copies = build_group([t.view for t in part], [t.protect for t in part], kernels.block, mask_mode)
            self.groups.append((slice(start, start + len(idx)), g))
            self.copies += copies
            start += len(idx)
        T = len(self.targets)
        self.device = targets[0].view.device if T else torch.device("cpu")
        self.hist = torch.zeros(T, Hist.WIDTH, dtype=torch.long, device=self.device)
        self.passes = 0
        self.todo: list[int] = []
        self.thresholds: list = [None] * T
        self.pending: list[int] = []          # targets whose protection needs every rank (column protection)
        self.candidates = None
        self.split: list[int] = []            # targets whose ties at the threshold are shared out across ranks

    # phase 0 ------------------------------------------------------------------------------------------
    def protection(self) -> Tensor | None:
        """Per-row protection thresholds. Rows are whole on a rank, except the rows of a transposed view
        (column protection of a sharded tensor): for those, returns this rank's candidates (int64) to
        gather from every rank and pass to `receive_protection`; None when nothing needs gathering."""
        parts = []
        for i, t in enumerate(self.targets):
            if not t.protect:
                continue
            if t.shard is not None and t.shard.transposed:
                parts.append(column_protect_payload(t.view, t.protect, t.shard))
                self.pending.append(i)
            else:
                self.thresholds[i] = row_protect_keys(t.view, t.protect)
        if not parts:
            self._set_protection()
            return None
        return torch.cat(parts)

    def receive_protection(self, gathered: Tensor) -> None:
        """Every rank's `protection` payload ([world, L]): the thresholds of the transposed views."""
        off = 0
        for i in self.pending:
            t = self.targets[i]
            C, width = t.view.shape[0], min(t.protect, t.shard.rows)
            self.thresholds[i] = merge_column_protect(gathered[:, off:off + C * width], C, t.protect, t.shard)
            off += C * width
        self._set_protection()

    def _set_protection(self) -> None:
        for sl, g in self.groups:
            set_protection(g, self.thresholds[sl])

    # phase 1 ------------------------------------------------------------------------------------------
    def histogram(self) -> Tensor | None:
        """The local histogram pass: the Hist rows (int64 [n, Hist.WIDTH]) of the tensors still searching
        (every tensor on the first pass, so NaN/inf are seen everywhere), or None when all are decided."""
        first = self.passes == 0
        if self.passes >= MAX_PASSES:
            raise RuntimeError("top-k projection: internal error, the threshold search did not converge")
        todo = list(range(len(self.search))) if first else \
            [i for i, s in enumerate(self.search) if s.stage in SEARCHING]
        if not todo:
            return None
        covered = [first and self.pre is not None and self.pre[1][i][2] and self.search[i].stage != Stage.DECIDED
                   for i in range(len(self.search))]
        launch = [i for i in todo if not covered[i]]
        for i in launch:
            s = self.search[i]
            if s.stage == Stage.WARM:
                s.lo, s.shift = warm_window(s.center)
            elif s.stage in (Stage.FULL, Stage.DECIDED):
                s.lo, s.shift = 0, FULL_SHIFT
        for sl, g in self.groups:
            sampled = [i - sl.start for i in launch if sl.start <= i < sl.stop and self.search[i].stage == Stage.SAMPLE]
            if sampled:
                for i, win in zip(sampled, sample_windows(self.K, g, self.search[sl], sampled)):
                    self.search[sl.start + i].lo, self.search[sl.start + i].shift = win
        self.hist.zero_()
        if launch:
            rows = [[0] * Window.WIDTH for _ in self.search]
            for i in launch:
                rows[i][Window.LO], rows[i][Window.SHIFT] = self.search[i].lo, self.search[i].shift
                rows[i][Window.ACTIVE] = 1
            win = torch.tensor(rows, dtype=torch.long, device=self.device)
            for sl, g in self.groups:
                self.K.hist(g, win[sl], self.hist[sl])
        cov = [i for i in todo if covered[i]]
        if cov:
            self.hist[cov] = self.pre[0][cov]
            for i in cov:
                self.search[i].lo, self.search[i].shift = self.pre[1][i][0], self.pre[1][i][1]
        self.todo = todo
        self.passes += 1
        return self.hist if len(todo) == len(self.search) else self.hist[todo]

    # phase 2 ------------------------------------------------------------------------------------------
    def decide(self, rows: Tensor) -> None:
        """Read the (summed) rows of `histogram`: raise on NaN/inf, then advance every search."""
        h = rows.cpu().numpy()
        if self.passes == 1:
            for pos, i in enumerate(self.todo):
                if h[pos, Hist.BAD] > 0:
                    t = self.targets[i]
                    check_finite(t.view, t.name)
                    raise ValueError(f"top-k projection: tensor {t.name!r} contains NaN or inf")
        for pos, i in enumerate(self.todo):
            if self.search[i].stage in SEARCHING:
                decide_one(self.search[i], h[pos], self.targets[i].name, across_ranks=self.sharded)

    # phase 3 ------------------------------------------------------------------------------------------
    def apply(self) -> Tensor | None:
        """Zero the keys below each final bin, keep (and decay) those above, list those inside it. Across
        ranks, returns what this rank holds of the ties that must be shared out (int64, to gather from
        every rank and pass to `settle`), or None when no tensor needs that."""
        rows, offsets, coff = [], [], 0
        for s, t in zip(self.search, self.targets):
            row = [0] * Decision.WIDTH
            if s.stage == Stage.DECIDED:
                row[Decision.LO] = row[Decision.HI] = KEY_INF if s.k == 0 else 0
                row[Decision.ACTIVE] = int(not (s.k == s.n and t.decay == 1.0 and not self.mask_mode))
            else:
                row[Decision.LO], row[Decision.HI] = s.lo, s.lo + (1 << s.shift)
                row[Decision.CAND_OFFSET], row[Decision.ACTIVE] = coff, 1
                coff += s.count                 # the whole tensor's count: room for this rank's share
            rows.append(row)
            offsets.append(row[Decision.CAND_OFFSET])
        dev = self.device
        dec = torch.tensor(rows, dtype=torch.long, device=dev).reshape(-1, Decision.WIDTH)
        decay = torch.tensor([t.decay for t in self.targets], dtype=torch.float32, device=dev)
        cnt = torch.zeros(len(self.targets), dtype=torch.int32, device=dev)
        ckey = torch.empty(max(coff, 1), dtype=torch.long, device=dev)
        cidx = torch.empty(max(coff, 1), dtype=torch.long, device=dev)
        for sl, g in self.groups:
            self.K.apply(g, dec[sl], decay[sl], cnt[sl], ckey, cidx, self.mask_mode)
        if not self.sharded:
            self.counts = [s.count if s.stage == Stage.DONE else 0 for s in self.search]
            self.candidates = (ckey[:coff], cidx[:coff])
            return None
        self.counts = cnt.tolist()
        keep = [torch.arange(o, o + c, device=dev) for o, c in zip(offsets, self.counts) if c]
        pos = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long, device=dev)
        self.candidates = (ckey[pos], cidx[pos])
        parts, start = [], 0
        for i, (s, t) in enumerate(zip(self.search, self.targets)):
            if s.stage == Stage.DONE and s.need < s.count:
                idx = self.candidates[1][start:start + self.counts[i]]
                C, cols = t.view.shape[0], (t.view.shape[1] if t.view.ndim == 2 else 1)
                per_row = torch.bincount(idx // max(cols, 1), minlength=C) if t.shard.transposed else \
                    torch.tensor([self.counts[i]], device=dev)
                parts.append(tie_payload(t.shard, per_row))
                self.split.append(i)
            start += self.counts[i]
        return torch.cat(parts) if parts else None

    # phase 4 ------------------------------------------------------------------------------------------
    def settle(self, gathered: Tensor | None = None) -> list[Tensor] | None:
        """Keep each tensor's share of the listed keys (key descending, index ascending): in one process
        the first `need`; across ranks, the share `ranks.tie_quota` computes from every rank's `apply`
        payload (`gathered`, [world, L]). Then copy back and remember the thresholds."""
        quota = [s.need for s in self.search]
        if self.sharded:
            quota = list(self.counts)                  # all ties survive unless they are shared out
            off = 0
            for i in self.split:
                t = self.targets[i]
                width = 1 + (t.view.shape[0] if t.shard.transposed else 1)
                quota[i] = tie_quota(gathered[:, off:off + width], self.rank, self.search[i].need, t.shard)
                off += width
        if sum(self.counts) > 0:
            self._settle_candidates(self.counts, quota)
        for w, tmp in self.copies:
            w.copy_(tmp)
        if self.state is not None:
            center = [-1] * len(self.search)
            for i, s in zip(self.order, self.search):
                center[i] = s.lo if s.stage == Stage.DONE else -1
            self.state.update(self.signature, center)
        if not self.mask_mode:
            return None
        masks: list = [None] * len(self.search)
        for sl, g in self.groups:
            for pos, m in enumerate(g.masks):
                masks[self.order[sl.start + pos]] = m
        return masks

    def _settle_candidates(self, counts: list[int], quota: list[int]) -> None:
        """Rank each tensor's listed keys (key descending, index ascending); fix the losers (and the
        winners' decay, or their mask bit) with one scatter launch per group."""
        ckey, cidx = self.candidates
        dev = ckey.device
        M = ckey.numel()
        seg = np.repeat(np.arange(len(counts)), counts)
        if M <= HOST_CANDIDATES:
            ck, ci = ckey.cpu().numpy(), cidx.cpu().numpy()
            order = np.lexsort((ci, -ck, seg))
            ci = ci[order]
        else:                                          # huge tie groups (e.g. all-zero tensors): sort on device
            o = torch.argsort(cidx, stable=True)
            o = o[torch.argsort(ckey[o], descending=True, stable=True)]
            o = o[torch.argsort(torch.from_numpy(seg).to(dev)[o], stable=True)]
            ci = cidx[o].cpu().numpy()
        coff = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        rank = np.arange(M) - coff[seg]                 # seg is sorted by construction
        win = rank < np.asarray(quota, dtype=np.int64)[seg]
        dec = np.asarray([t.decay for t in self.targets], dtype=np.float32)[seg]
        if self.mask_mode:
            sel, fac = win, np.ones(M, dtype=np.float32)
        else:
            sel = ~win | (dec != 1.0)
            fac = np.where(win, dec, 0.0).astype(np.float32)
        for sl, g in self.groups:
            part = sel & (seg >= sl.start) & (seg < sl.stop)
            if part.any():
                self.K.scatter(g, torch.from_numpy((seg[part] - sl.start).astype(np.int64)).to(dev),
                               torch.from_numpy(ci[part]).to(dev), torch.from_numpy(fac[part]).to(dev),
                               self.mask_mode)


Reduce = Callable[[Tensor], None]
Gather = Callable[[Tensor], Tensor]


def run(proj: Projection, reduce: Reduce | None = None, gather: Gather | None = None) -> list[Tensor] | None:
    """Drive a projection through its phases. `reduce` sums an int64 tensor across ranks in place and
    `gather` stacks a flat int64 tensor from every rank ([world, L], rank order); both None in one process,
    where no phase needs them. Returns the masks in mask mode."""
    payload = proj.protection()
    if payload is not None:
        proj.receive_protection(gather(payload))
    while (rows := proj.histogram()) is not None:
        if reduce is not None:
            reduce(rows)
        proj.decide(rows)
    ties = proj.apply()
    return proj.settle(gather(ties) if ties is not None else None)
