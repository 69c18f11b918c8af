"""The sparse weight format: CSR + transposed index + tile maps must describe exactly the weight's non-zeros."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparseformer.kernels.sparse_format import compact, validate


def _sparse(n, k, density, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    return w * (torch.rand(n, k, generator=g) < density)


def _dense_from_csr(sw, w):
    n, k = sw.shape
    out = torch.zeros(n, k, dtype=torch.float32)
    ptr = sw.row_ptr.long()
    for r in range(n):
        for j in range(int(ptr[r]), int(ptr[r + 1])):
            out[r, sw.col[j]] = w[r, sw.col[j]].float()
    return out


@given(n=st.integers(1, 40), k=st.integers(1, 40), density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]),
       seed=st.integers(0, 2**16), transpose=st.booleans())
@example(n=1, k=1, density=0.0, seed=0, transpose=False)
@example(n=1, k=37, density=1.0, seed=1, transpose=False)
def test_compact_describes_the_nonzeros(n, k, density, seed, transpose):
    w = _sparse(k, n, density, seed).t() if transpose else _sparse(n, k, density, seed)   # non-contiguous too
    sw = compact(w)
    validate(sw, w)
    mask = w != 0
    assert sw.nnz == int(mask.sum())
    assert sw.shape == (n, k)
    assert sw.density == pytest.approx(sw.nnz / (n * k))
    # CSR: rows ascending, columns ascending inside a row, values in row-major order
    assert torch.equal(_dense_from_csr(sw, w), w.float())
    assert torch.equal(sw.values(w), w[mask].float())
    assert torch.equal(sw.row_ptr.long()[1:] - sw.row_ptr.long()[:-1], mask.sum(1))
    # transposed index: the CSR of W^T, i.e. W^T's non-zeros in row-major order
    assert torch.equal(sw.t_ptr.long()[1:] - sw.t_ptr.long()[:-1], mask.sum(0))
    assert torch.equal(sw.values(w)[sw.t_perm], w.t()[mask.t()].float())
    assert torch.equal(sw.t_row32.long(), mask.t().nonzero()[:, 1])
    assert sw.max_row_nnz == (int(mask.sum(1).max()) if n else 0)
    assert sw.max_col_nnz == int(mask.sum(0).max())


@given(n=st.integers(1, 70), k=st.integers(1, 70), tile=st.sampled_from([16, 32]),
       density=st.sampled_from([0.0, 0.003, 0.02, 0.3]), seed=st.integers(0, 2**16))
def test_tile_map_marks_exactly_the_occupied_tiles(n, k, tile, density, seed):
    w = _sparse(n, k, density, seed)
    tm = compact(w, tiles=(tile,)).tile_map(tile)
    nb_n, nb_k = -(-n // tile), -(-k // tile)
    padded = torch.zeros(nb_n * tile, nb_k * tile, dtype=torch.bool)
    padded[:n, :k] = w != 0
    want = padded.view(nb_n, tile, nb_k, tile).any(3).any(1)
    assert torch.equal(tm.occ, want)
    assert tm.n_tiles == int(want.sum())
    assert tm.occupancy == pytest.approx(int(want.sum()) / want.numel())
    for i in range(nb_n):                      # block rows list their k-tiles ascending
        lo, hi = int(tm.ptr[i]), int(tm.ptr[i + 1])
        assert tm.idx[lo:hi].long().tolist() == want[i].nonzero().squeeze(1).tolist()
    for j in range(nb_k):                      # block columns list their n-tiles ascending
        lo, hi = int(tm.t_ptr[j]), int(tm.t_ptr[j + 1])
        assert tm.t_idx[lo:hi].long().tolist() == want[:, j].nonzero().squeeze(1).tolist()


def test_negative_zero_is_zero_and_values_are_read_live():
    w = torch.tensor([[0.0, -0.0, 2.0], [-3.0, 0.0, 0.0]])
    sw = compact(w)
    assert sw.nnz == 2 and sw.col.tolist() == [2, 0]
    w2 = w * 5                                  # same support, new values: the format still applies
    assert torch.equal(sw.values(w2), torch.tensor([10.0, -15.0]))
    assert sw.values(w2, torch.float16).dtype == torch.float16


def test_validate_catches_a_stale_support():
    w = _sparse(8, 9, 0.3, 0)
    sw = compact(w)
    w2 = w.clone()
    w2[w2 == 0] = 1.0
    with pytest.raises(ValueError, match="support differs"):
        validate(sw, w2)
    with pytest.raises(ValueError, match="shape"):
        validate(sw, w[:4])


def test_compact_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        compact(torch.ones(3))
