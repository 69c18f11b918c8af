"""One tensor's threshold search, on the host: windows, and what a (summed) histogram row decides.

A window is [lo, lo + NB << shift); a histogram pass (phases.py) counts the keys above it and the keys in
each of its NB bins. A search starts from a guess (the previous threshold, sampled keys, or the whole key
range) and narrows to the bin that holds the k-th largest key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from .._schema import LOG_NB, NB, Hist
from .tables import Group, TopkKernels

FULL_SHIFT = 32 - LOG_NB          # a window [0, 2**32) covers every key, protected ones included
WARM_HALF = 3 << 19               # +-(1/16 relative) in key units is about 2**23 / 16 / ln 2 < 3 * 2**19
CAND_CAP = 1 << 16                # listed candidates per tensor before the window is refined


class Stage(Enum):
    """Where one tensor's threshold search stands."""

    WARM = "window around the previous threshold"
    SAMPLE = "window around the threshold of sampled keys"
    FULL = "the whole key range"
    REFINE = "one bin of the previous window"
    DECIDED = "k = 0 or k = numel: nothing to search"
    DONE = "the bin holding the k-th key is known"


SEARCHING = (Stage.WARM, Stage.SAMPLE, Stage.FULL, Stage.REFINE)
NEXT_GUESS = {Stage.WARM: Stage.SAMPLE, Stage.SAMPLE: Stage.FULL}   # when the k-th key is outside the window


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
class Search:
    """One tensor's threshold search (host side)."""

    k: int                      # clipped to [0, n]
    n: int
    stage: Stage
    center: int = -1            # warm-start key
    lo: int = 0                 # current window [lo, lo + NB << shift)
    shift: int = FULL_SHIFT
    need: int = 0               # DONE: keys of the final bin [lo, lo + 1 << shift) that survive
    count: int = 0              # DONE: keys in the final bin

def sample_windows(K: TopkKernels, g: Group, searches: Sequence[Search], sampled: Sequence[int]
                   ) -> list[tuple[int, int]]:
    """Windows (lo, shift) around the threshold estimated from S sampled keys, for the group's tensors
    `sampled` (positions in the group)."""
    S = K.samples
    samp = torch.empty(len(g.tensors), S, dtype=torch.long, device=g.meta.device)
    K.sample(g, samp)
    s = torch.sort(samp[torch.tensor(sampled, device=samp.device)], dim=1).values.cpu().numpy()
    out = []
    for row, i in zip(s, sampled):
        r = searches[i].k * S / max(1, searches[i].n)
        margin = 4.0 * (r + 1.0) ** 0.5 + 4.0
        pos_lo, pos_hi = int(np.floor(S - r - margin)), int(np.ceil(S - r + margin))
        lo = 0 if pos_lo <= 0 else int(row[pos_lo])
        hi = (1 << 32) if pos_hi >= S - 1 else int(row[pos_hi]) + 1
        out.append(fit_window(lo, hi))
    return out


def decide_one(s: Search, row: np.ndarray, name: str, *, across_ranks: bool = False) -> None:
    """Advance one search from its (summed) Hist row: next guess, refine, or DONE.

    `across_ranks`: the tensor is sharded, so no rank can sort the candidates of a bin that holds several
    keys: refine down to single keys (shift 0), and never guess from samples (ranks would sample apart).
    """
    above = int(row[Hist.ABOVE])
    h = row[Hist.FIRST_BIN:]
    need = s.k - above
    rc = np.cumsum(h[::-1])                                 # keys in bins >= NB - 1 - j
    if not 1 <= need <= rc[-1]:                            # the k-th key is outside the window
        if s.stage not in NEXT_GUESS:
            raise RuntimeError(f"top-k projection: internal error, no bin found for {name!r}")
        s.stage = NEXT_GUESS[s.stage]
        if across_ranks and s.stage == Stage.SAMPLE:
            s.stage = Stage.FULL
        return
    j = int(np.argmax(rc >= need))
    b = NB - 1 - j
    greater = above + (int(rc[j - 1]) if j > 0 else 0)
    count = int(h[b])
    bin_lo = s.lo + (b << s.shift)
    if s.shift > 0 and (count > CAND_CAP or across_ranks):  # too many candidates (or keys): zoom in
        s.lo, s.shift, s.stage = bin_lo, max(0, s.shift - LOG_NB), Stage.REFINE
    else:
        s.lo, s.need, s.count, s.stage = bin_lo, s.k - greater, count, Stage.DONE
