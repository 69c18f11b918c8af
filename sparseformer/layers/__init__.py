"""Sparse layers: modules that hold the top-k budget of their tensors, and the drop-in for other models.

- owner.py: who owns k (the SparseOwner mixin) and `sparse_tensors(model)`, the one list of a model's
  sparse tensors (name, param, kind, k, protect, owner);
- linear.py: SparseLinear (an nn.Linear running the sparse matmuls of sparseformer.kernels.spmm);
- embedding.py: SparseEmbedding (an nn.Embedding holding k);
- adapters.py: how sparsify converts nn.Linear, Hugging Face Conv1D and registered modules;
- sparsify.py: `sparsify` / `densify` / `summary` for any torch model.
"""

from .adapters import Adapter, register_adapter
from .embedding import SparseEmbedding
from .linear import SparseLinear, SparseProduct
from .owner import SparseOwner, SparseTensor, owner_of, project_owned_, sparse_tensors
from .sparsify import densify, refresh, sparse_layers, sparsify, summary

__all__ = ["Adapter", "SparseEmbedding", "SparseLinear", "SparseOwner", "SparseProduct", "SparseTensor", "densify",
           "owner_of", "project_owned_", "refresh", "register_adapter", "sparse_layers", "sparse_tensors",
           "sparsify", "summary"]
