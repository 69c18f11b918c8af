"""The "cuda" kernel set of the fused Adam pass (tables.AdamKernels), from csrc/adamw_kernels.cu.

Same tables and semantics as triton_kernels.py; the kernel addresses tensors by the AdamPtrs pointers.
"""

from __future__ import annotations

from .._ext import require as extension
from .._schema import CUDA_BLOCK, DTYPE_CODES
from .tables import AdamGroup, AdamKernels


class CudaAdamKernels(AdamKernels):
    """The fused Adam pass as one CUDA launch per dtype on the current stream."""

    name = "cuda"
    block = CUDA_BLOCK

    def adam(self, g: AdamGroup, scale, win, hist) -> None:
        extension().adamw(g.prog_tid, g.prog_start, g.ptrs, g.hyp, scale, win, hist, DTYPE_CODES[g.dtype])
