"""Which tensors of a model are sparse under a SparsityConfig, the k the schedule writes each step, and the
one param-group builder.

The model declares its sparse-capable tensors by building its layers with their kind (sparseformer.layers:
SparseLinear and SparseEmbedding hold k; GPT's weight matrices and wpe are kind "weight", wte and lm_head
"embed", every bias "bias"). `configure(model, cfg)` turns on the kinds the config makes sparse (embeddings
and biases are optional) with the protected top-j per neuron where a layer declares its neuron side;
`write_ks(model, step, total, cfg)` is the trainer's one writer of each step's k. Never sparse: RMSNorm
gains, sink logits, the bigram table, final_logits_bias. See docs/dropin.md for the ownership of k.
"""

from __future__ import annotations

from torch import nn

from ..config import SparsityConfig
from ..errors import ConfigError
from ..layers import SparseTensor, sparse_tensors
from .schedule import embed_density, k_for, weight_density

__all__ = ["check_protection", "configure", "density_for", "param_groups", "write_ks"]

NO_DECAY = ("bigram_table",)        # >= 2-D parameters that are not decayed


def density_for(kind: str, step: int, total: int, cfg: SparsityConfig) -> float:
    """The scheduled density of a tensor of this kind at `step`."""
    return weight_density(step, total, cfg) if kind == "weight" else embed_density(step, total, cfg)


def configure(model: nn.Module, cfg: SparsityConfig) -> list[SparseTensor]:
    """Give every sparse-capable tensor of `model` that `cfg` makes sparse a budget (k = numel: dense until
    the schedule lowers it) and its protection; take it from the others. Returns the sparse tensors."""
    for t in sparse_tensors(model, declared=True):
        on = not cfg.dense and (t.kind != "embed" or cfg.sparse_embeddings) and (
            t.kind != "bias" or cfg.sparse_biases)
        axis = getattr(t.owner, "neuron_axis", None) if t.slot == "weight" else None
        protect = (cfg.protect_per_neuron, axis) if on and axis and cfg.protect_per_neuron > 0 else None
        t.owner.set_budget(t.slot, t.param.numel() if on else None, protect)
    return sparse_tensors(model)


def write_ks(model: nn.Module, step: int, total: int, cfg: SparsityConfig) -> dict[str, int]:
    """Write this step's k of every sparse tensor into its owner; returns {tensor name: k}."""
    ks = {}
    for t in sparse_tensors(model):
        k = k_for(t.param.numel(), density_for(t.kind, step, total, cfg))
        t.owner.set_budget(t.slot, k, t.protect)
        ks[t.name] = k
    return ks


def param_groups(model: nn.Module, *, weight_decay: float = 0.0, lr: float | None = None,
                 decay_1d: bool = False, no_decay: tuple[str, ...] = NO_DECAY) -> list[dict]:
    """Param groups for SparseAdamW or any torch optimizer: the trainable parameters that decay (>= 2-D, or
    every one when `decay_1d`, except names ending in `no_decay`) and those that do not, each once. The k
    of sparse tensors lives in their layers, not in the groups."""
    extra = {} if lr is None else {"lr": lr}
    decay, keep, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if (p.ndim >= 2 or decay_1d) and not name.endswith(no_decay) else keep).append(p)
    groups = []
    if decay:
        groups.append(dict(params=decay, name="decay", weight_decay=weight_decay, **extra))
    if keep:
        groups.append(dict(params=keep, name="no_decay", weight_decay=0.0, **extra))
    return groups


def check_protection(tensors: list[SparseTensor], cfg: SparsityConfig) -> None:
    """Raise ConfigError when the final budget of a protected matrix (of `configure`'s list) is below j per
    neuron."""
    for t in tensors:
        if t.protect is None:
            continue
        j, axis = t.protect
        neurons = t.param.shape[0] if axis == "rows" else t.param.shape[1]
        k = k_for(t.param.numel(), cfg.weight_density)
        if j * neurons > k:
            raise ConfigError(f"sparsity.protect_per_neuron={j} needs {j * neurons} entries in {t.name} but its "
                              f"final budget is k={k}; lower protect_per_neuron or raise weight_density")
