"""The sparse weight format the sparse matmuls read, rebuilt from the dense-with-zeros weight W [N, K].

One call, `compact(w)`, makes every index the kernels need in one streaming pass over W (`nonzero`) plus
work on the non-zeros only (nnz-sized sorts and counts):

- compressed rows (CSR) of W for the forward Y = X W^T: `row_ptr` [N+1], and per non-zero in row-major
  order its `row` and `col`;
- the transposed index (CSR of W^T = CSC of W) for dX = dY W: `t_ptr` [K+1], `t_row` (the n of each entry,
  in column-major order) and `t_perm` (entry positions in CSR order, so values_t = values[t_perm]);
- on demand, per tile size t, a tile map for the block-sparse tensor-core path: which t x t tiles of W hold
  a non-zero, as block rows (`ptr`/`idx`, for Y = X W^T) and block columns (`t_ptr`/`t_idx`, for dX);
- on demand, padded rows (ELL) of W (forward) or of W^T (dX) for the "ell" kernel: slot-major [L, P]
  column indices and source positions, L = the longest row (`ell(transposed)`, built from the CSR with a
  few nnz-sized torch ops). Padding costs L*P slots; `ell_fits` says whether that stays within
  ELL_MAX_PAD * (nnz + P), and the planner uses another method when it does not (very skewed rows: one
  full row of W 2048 x 8192 would need 16.7 M slots for 16 K non-zeros at 1/1024). The "+ P" keeps very
  sparse weights (well under one entry per row, where a row with 3 entries sets L = 3) in the format.

The format holds indices only. Values are read from the weight at call time (`values(w)`, an nnz-sized
gather), so a format stays correct while the support is unchanged, whatever happens to the values. The
support is what a format pins: rebuild it whenever the set of zeros may have changed (SparseLinear does
this when the weight's version counter moves). All index tensors are int32 except the int64 gather indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Ell", "SparseWeight", "TileMap", "compact", "validate"]

ELL_MAX_PAD = 4     # ELL slots allowed per (non-zero + row) before the padded format is refused


@dataclass(frozen=True)
class TileMap:
    """Which t x t tiles of W [N, K] hold a non-zero (tiles past the edge are partial)."""
    tile: int
    occ: Tensor           # bool [ceil(N/t), ceil(K/t)]
    ptr: Tensor           # int32 [ceil(N/t)+1]: block row i owns idx[ptr[i]:ptr[i+1]]
    idx: Tensor           # int32 [n_tiles]: the block columns (k-tiles) of each block row, ascending
    t_ptr: Tensor         # int32 [ceil(K/t)+1]: block column j owns t_idx[t_ptr[j]:t_ptr[j+1]]
    t_idx: Tensor         # int32 [n_tiles]: the block rows (n-tiles) of each block column, ascending
    n_tiles: int

    @property
    def occupancy(self) -> float:
        """Fraction of tiles that hold at least one non-zero (1.0 for an empty shape)."""
        total = self.occ.numel()
        return self.n_tiles / total if total else 1.0


@dataclass(frozen=True)
class Ell:
    """Padded rows of S [P, Q] (S = W, or W^T for dX), slot-major: slot j of rows p..p+b is one contiguous run.

    Row p holds its entries in slots 0..row_len[p]-1 (columns ascending); padded slots have col 0 and src nnz,
    so `values` gives them 0."""
    col: Tensor           # int32 [L, P] column (q) of each slot
    src: Tensor           # int64 [L, P] CSR position of each slot's entry in SparseWeight order (nnz = padding)
    row_len: Tensor       # int32 [P] entries per row
    slots: int            # L = max(row_len)

    def values(self, vals: Tensor) -> Tensor:
        """[L, P] values of the slots from the CSR-order values `vals` [nnz] (0 in padded slots)."""
        return torch.cat([vals, vals.new_zeros(1)])[self.src]


@dataclass
class SparseWeight:
    """Indices of the non-zeros of a weight W [N, K] (see the module docstring)."""
    shape: tuple[int, int]
    nnz: int
    row_ptr: Tensor       # int32 [N+1]
    row: Tensor           # int64 [nnz] row of each entry, row-major (CSR) order
    col: Tensor           # int64 [nnz] column of each entry, CSR order
    row32: Tensor         # int32 [nnz] the same rows, for the kernels
    col32: Tensor         # int32 [nnz] the same columns, for the kernels
    t_ptr: Tensor         # int32 [K+1]
    t_row32: Tensor       # int32 [nnz] row of each entry, column-major (CSC) order
    t_col32: Tensor       # int32 [nnz] column of each entry, CSC order
    t_perm: Tensor        # int64 [nnz] CSR position of each CSC entry
    max_row_nnz: int
    max_col_nnz: int
    _tiles: dict = field(default_factory=dict, repr=False)
    _ell: dict = field(default_factory=dict, repr=False)

    @property
    def density(self) -> float:
        n, k = self.shape
        return self.nnz / (n * k) if n * k else 1.0

    @property
    def device(self) -> torch.device:
        return self.row_ptr.device

    def values(self, w: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The non-zero values of `w` in CSR order: fp32 (fp64 for an fp64 `w`) unless `dtype` is given."""
        v = w.detach()[self.row, self.col]
        return v.to(dtype or (torch.float64 if w.dtype == torch.float64 else torch.float32))

    def tile_map(self, tile: int) -> TileMap:
        """The tile map for t x t tiles, built once from the indices (no pass over W)."""
        if tile not in self._tiles:
            self._tiles[tile] = _build_tiles(self, tile)
        return self._tiles[tile]

    def ell_fits(self, transposed: bool = False) -> bool:
        """Whether the padded rows of W (or of W^T) take at most ELL_MAX_PAD * (nnz + P) slots (no build needed)."""
        n, k = self.shape
        rows, longest = (k, self.max_col_nnz) if transposed else (n, self.max_row_nnz)
        return longest * rows <= ELL_MAX_PAD * (self.nnz + rows)

    def ell(self, transposed: bool = False) -> Ell:
        """Padded rows of W (forward: S = W) or of W^T (dX: S = W^T), built once from the CSR / CSC indices."""
        if transposed not in self._ell:
            if transposed:
                self._ell[True] = _build_ell(self.t_ptr, self.t_col32.long(), self.t_row32, self.t_perm,
                                             self.max_col_nnz)
            else:
                pos = torch.arange(self.nnz, device=self.device)
                self._ell[False] = _build_ell(self.row_ptr, self.row, self.col32, pos, self.max_row_nnz)
        return self._ell[transposed]

    def flat_index(self) -> Tensor:
        """Row-major flat index (n*K + c) of each entry, CSR order, int64."""
        return self.row * self.shape[1] + self.col


def compact(w: Tensor, tiles: tuple[int, ...] = ()) -> SparseWeight:
    """Build the SparseWeight of a 2-D dense-with-zeros weight `w` (any strides); tile maps for `tiles`."""
    if w.ndim != 2:
        raise ValueError(f"compact: want a 2-D weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    dev = w.device
    flat = (w.detach() != 0).reshape(-1).nonzero().squeeze(1)       # row-major order = CSR order
    nnz = flat.numel()
    row = flat // k if k else flat
    col = flat - row * k
    row_ptr = _ptr(row, n)
    t_perm = torch.argsort(col, stable=True)                          # rows stay ascending inside a column
    t_row = row[t_perm]
    t_ptr = _ptr(col, k)
    sw = SparseWeight(
        shape=(n, k), nnz=nnz, row_ptr=row_ptr, row=row, col=col, row32=row.to(torch.int32),
        col32=col.to(torch.int32), t_ptr=t_ptr, t_row32=t_row.to(torch.int32),
        t_col32=col[t_perm].to(torch.int32), t_perm=t_perm,
        max_row_nnz=_max_count(row_ptr), max_col_nnz=_max_count(t_ptr))
    for t in tiles:
        sw.tile_map(t)
    return sw


def _ptr(keys: Tensor, size: int) -> Tensor:
    """int32 [size+1] offsets of a CSR whose entries have these (sorted or not) segment keys."""
    ptr = torch.zeros(size + 1, dtype=torch.int64, device=keys.device)
    if keys.numel():
        ptr[1:] = torch.bincount(keys, minlength=size).cumsum(0)
    return ptr.to(torch.int32)


def _max_count(ptr: Tensor) -> int:
    return int((ptr[1:] - ptr[:-1]).max()) if ptr.numel() > 1 else 0


def _build_ell(ptr: Tensor, seg: Tensor, cols: Tensor, src: Tensor, slots: int) -> Ell:
    """ELL of a CSR (ptr [P+1]; per entry in CSR order its row `seg`, column `cols`, source position `src`)."""
    rows = ptr.numel() - 1
    nnz = cols.numel()
    col = torch.zeros((slots, rows), dtype=torch.int32, device=ptr.device)
    pos = torch.full((slots, rows), nnz, dtype=torch.int64, device=ptr.device)
    if nnz:
        slot = torch.arange(nnz, device=ptr.device) - ptr.long()[seg]      # rank of each entry in its row
        col[slot, seg] = cols.to(torch.int32)
        pos[slot, seg] = src
    return Ell(col=col, src=pos, row_len=(ptr[1:] - ptr[:-1]).to(torch.int32), slots=slots)


def _build_tiles(sw: SparseWeight, tile: int) -> TileMap:
    if tile <= 0:
        raise ValueError(f"tile_map: tile must be positive, got {tile}")
    n, k = sw.shape
    nb_n, nb_k = -(-n // tile), -(-k // tile)
    key = (sw.row // tile) * nb_k + (sw.col // tile)
    occ = torch.zeros(nb_n * nb_k, dtype=torch.bool, device=sw.device)
    if sw.nnz:
        occ[key] = True
    occ = occ.view(nb_n, nb_k)
    blocks = occ.nonzero()                       # row-major: k-tiles ascending inside each n-tile
    t_blocks = occ.t().nonzero()                 # n-tiles ascending inside each k-tile
    return TileMap(tile=tile, occ=occ,
                   ptr=_ptr(blocks[:, 0], nb_n), idx=blocks[:, 1].to(torch.int32),
                   t_ptr=_ptr(t_blocks[:, 0], nb_k), t_idx=t_blocks[:, 1].to(torch.int32),
                   n_tiles=blocks.shape[0])


def validate(sw: SparseWeight, w: Tensor | None = None) -> None:
    """Raise ValueError when the format is inconsistent, or (given `w`) does not match w's non-zeros.

    A separate call from `compact`, so the hot path can skip it (as stk's _validate_matrix)."""
    n, k = sw.shape
    checks = [
        (sw.row_ptr.shape == (n + 1,), f"row_ptr shape {tuple(sw.row_ptr.shape)} != ({n + 1},)"),
        (sw.t_ptr.shape == (k + 1,), f"t_ptr shape {tuple(sw.t_ptr.shape)} != ({k + 1},)"),
        (int(sw.row_ptr[-1]) == sw.nnz and int(sw.t_ptr[-1]) == sw.nnz, "pointer totals differ from nnz"),
        (all(t.numel() == sw.nnz for t in (sw.row, sw.col, sw.row32, sw.col32, sw.t_row32, sw.t_col32,
                                           sw.t_perm)),
         "index lengths differ from nnz"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"SparseWeight {n}x{k}: {msg}")
    if w is not None:
        if tuple(w.shape) != (n, k):
            raise ValueError(f"SparseWeight {n}x{k}: weight has shape {tuple(w.shape)}")
        if not torch.equal(sw.flat_index(), (w != 0).reshape(-1).nonzero().squeeze(1)):
            raise ValueError(f"SparseWeight {n}x{k}: support differs from the weight's non-zeros; rebuild it")
