"""Sparse matmuls for a linear layer whose weight W [N, K] is dense-shaped with zeros off its support.

The three products of y = x W^T + b, with x [..., K] flattened to M rows:
- forward  Y  = X W^T   (`dds(x, w, sw, "fwd", method)`: dense output, dense input, sparse weight)
- input    dX = dY W    (`dds(dy, w, sw, "dx", method)`)
- weight   dW = dY^T X  under a DwPolicy: dense (default, the paper's semantics) or on the support (`sdd`).
One module per job, each importing only those above it:
  reference.py      the masked dense ground truth (linear_ref, dds_ref, sdd_ref)
  torch_kernels.py  the torch sparse paths (CSR, gather + index_add, the support dW)
  triton_kernels.py the Triton kernels and launchers (gather, ELL, tiles, SDDMM)
  methods.py        the registry: one entry per method (kernels, format, layout, rule tier)
  rules.py          which method a density picks; plan.py the planner (backend from kernels/dispatch.py)
  launch.py         run a method by name, with the fallback for auto-chosen kernels that fail
  policy.py         the dW policy; autograd.py the autograd Function and `sparse_linear`
  ops.py            the products as torch.library custom ops, for torch.compile
dtypes: float32, float16, bfloat16 (float64 on the torch backend). See docs/sparse-matmul.md.
"""

from .autograd import sparse_linear
from .launch import dds, sdd
from .methods import METHODS, Method
from .plan import LinearPlan, choose_method, plan_linear
from .policy import DwPolicy
from .reference import dds_ref, linear_ref, sdd_ref

__all__ = ["METHODS", "DwPolicy", "LinearPlan", "Method", "choose_method", "dds", "dds_ref", "linear_ref",
           "plan_linear", "sdd", "sdd_ref", "sparse_linear"]
