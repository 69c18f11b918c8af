"""The "cuda" backend's kernel set: the passes of topk_device.py / adamw_device.py from csrc/ (sparseformer.kernels._C).

Same tables and the same semantics as topk_triton.TritonTopkKernels; the CUDA kernels build their
histograms in shared memory. Loaded lazily: importing this module never needs the extension.
"""

from __future__ import annotations

import torch

_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def _c():
    from .dispatch import cuda_ext
    ext = cuda_ext()
    if ext is None:
        raise RuntimeError("the CUDA extension sparseformer.kernels._C is not available")
    return ext


class CudaTopkKernels:
    """The streaming passes of topk_device.py, as CUDA launches on the current stream."""

    name = "cuda"
    block = 4096            # csrc/sf_kernels.h kBlock
    samples = 4096

    @staticmethod
    def sample(g, out):
        _c().topk_sample(g.meta, g.thr, g.cut, out, _CODE[g.dtype])

    @staticmethod
    def hist(g, win, hist, stats):
        _c().topk_hist(g.prog_tid, g.prog_start, g.meta, g.thr, g.cut, win, hist, stats, _CODE[g.dtype])

    @staticmethod
    def apply(g, fin, decay, cnt, ckey, cidx, mask_out):
        _c().topk_apply(g.prog_tid, g.prog_start, g.meta, g.thr, g.cut, fin, decay, cnt, ckey, cidx,
                        _CODE[g.dtype], bool(mask_out))

    @staticmethod
    def scatter(g, tid, idx, fac, mask_out):
        _c().topk_scatter(tid.contiguous(), idx.contiguous(), fac.contiguous(), g.meta, _CODE[g.dtype],
                          bool(mask_out))

    @staticmethod
    def adam(prog_tid, prog_start, bases, aligned, ptrs, hyp, scale, win, hist, stats, dtype):
        _c().adamw(prog_tid, prog_start, ptrs, hyp, scale, win, hist, stats, _CODE[dtype])
