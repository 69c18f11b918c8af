"""The "cuda" kernel set of the top-k projection (tables.TopkKernels): the passes from csrc/topk_kernels.cu.

Same tables and semantics as triton_kernels.py; the CUDA kernels address tensors by Meta.PTR and build
their histograms in shared memory. Importing this module never needs the extension; a launch does.
"""

from __future__ import annotations

from .._ext import require as extension
from .._schema import CUDA_BLOCK, DTYPE_CODES
from .tables import Group, TopkKernels


class CudaTopkKernels(TopkKernels):
    """The passes as CUDA launches on the current stream."""

    name = "cuda"
    block = CUDA_BLOCK
    samples = 4096

    def sample(self, g: Group, out) -> None:
        extension().topk_sample(g.meta, g.thr, g.cut, out, DTYPE_CODES[g.dtype])

    def hist(self, g: Group, win, hist) -> None:
        extension().topk_hist(g.prog_tid, g.prog_start, g.meta, g.thr, g.cut, win, hist, DTYPE_CODES[g.dtype])

    def apply(self, g: Group, dec, decay, cnt, ckey, cidx, mask_out: bool) -> None:
        extension().topk_apply(g.prog_tid, g.prog_start, g.meta, g.thr, g.cut, dec, decay, cnt, ckey, cidx,
                               DTYPE_CODES[g.dtype], bool(mask_out))

    def scatter(self, g: Group, tid, idx, fac, mask_out: bool) -> None:
        extension().topk_scatter(tid.contiguous(), idx.contiguous(), fac.contiguous(), g.meta,
                                 DTYPE_CODES[g.dtype], bool(mask_out))
