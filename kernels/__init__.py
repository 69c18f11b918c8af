"""sparseformer.kernels: the fast ops and their pure-torch references.

Public API (stable): `topk_mask`, `project_topk_`, `TopkState`, `protect_view`, `sparse_adamw_step_`,
`available`, `abstopk` (activation AbsTopK), and the sparse matmuls `sparse_linear`, `plan_linear`, `dds`,
`sdd`, `DwPolicy`, `LinearPlan`, `SparseWeight`, `compact` and `emit_formats` (the formats of many projected
weights at once; see spmm/, sparse_format.py and emit/). Each op takes `backend=None|"torch"|"triton"|"cuda"`;
dispatch.py says how None resolves. The families live in topk/, adamw/, abstopk/ and emit/ (each: reference
-> kernels -> launcher -> public op). This package imports nothing from the rest of sparseformer.
"""

from __future__ import annotations

from .abstopk import abstopk
from .adamw import sparse_adamw_step_
from .dispatch import available, resolve
from .emit import emit_formats
from .sparse_format import SparseWeight, compact
from .spmm import DwPolicy, LinearPlan, dds, plan_linear, sdd, sparse_linear
from .topk import TopkState, project_topk_, protect_view, topk_mask

__all__ = ["DwPolicy", "LinearPlan", "SparseWeight", "TopkState", "abstopk", "available", "compact", "dds",
           "emit_formats", "plan_linear", "project_topk_", "protect_view", "resolve", "sdd", "sparse_adamw_step_",
           "sparse_linear", "topk_mask"]
