"""The ground truth of every sparse product: masked dense matmuls on the dense-with-zeros weight.

A sparse weight W [N, K] is stored dense-shaped with exact zeros off its support, so F.linear on W *is* the
sparse product; every method in methods.py must match these up to float rounding (fp32 accumulation).
- `linear_ref(x, w, b)`: y = x W^T + b (the whole layer);
- `dds_ref(a, w, op, bias)`: op "fwd": a W^T (+ bias) [M, N]; op "dx": a W [M, K] (a in its own dtype);
- `sdd_ref(dy, x, rows, cols)`: (dy^T x) at the listed entries, fp32 [Z] (the dW of a support).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

OPS = ("fwd", "dx")


def linear_ref(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """The masked dense reference: F.linear on the dense-with-zeros weight."""
    return F.linear(x, w, b)


def dds_ref(a: Tensor, w: Tensor, op: str, bias: Tensor | None = None) -> Tensor:
    """'fwd': a @ w^T (+ bias); 'dx': a @ w (dense matmuls on the masked weight, in a's dtype)."""
    w = w.to(a.dtype)
    if op == "fwd":
        return F.linear(a, w, None if bias is None else bias.to(a.dtype))
    return a @ w


def sdd_ref(dy: Tensor, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """out[z] = sum_m dy[m, rows[z]] * x[m, cols[z]] in fp32: (dy^T x) at the listed entries."""
    return (dy[:, rows].float() * x[:, cols].float()).sum(0)
