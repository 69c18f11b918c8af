"""SparseEmbedding: an nn.Embedding whose table is kept at exactly k non-zeros (the module holds k)."""

from __future__ import annotations

from torch import nn

from .owner import SparseOwner

__all__ = ["SparseEmbedding"]


class SparseEmbedding(SparseOwner, nn.Embedding):
    """nn.Embedding holding the top-k budget of its table: `k` (None = dense), `kind` ("embed" or "weight":
    the schedule it follows). Same parameters and state dict as nn.Embedding; the lookup is unchanged (a
    gather reads only the rows it needs, sparse or not)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *args, k: int | None = None,
                 kind: str = "embed", **kwargs):
        self._init_owner(k, None, kind, None)
        super().__init__(num_embeddings, embedding_dim, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.k is None else f", k={self.k}")
