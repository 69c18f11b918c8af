"""Which tensors of a GPT are sparse, what kind each is, and the SparseAdamW param groups (SPEC §2.1, §2.4).

Kinds: "weight" (c_attn, attention c_proj, c_fc, MLP c_proj, and wpe when present), "embed" (wte, lm_head) and
"bias" (every Linear bias). Never sparse: RMSNorm gains, sink logits, the bigram table, final_logits_bias.
Protected top-j per neuron (the neuron side only): rows of c_fc and c_attn, columns of MLP and attention c_proj.
Weight decay: >= 2-D parameters except the bigram table.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import SparsityConfig, TrainConfig
from .schedule import embed_density, k_for, weight_density

_WEIGHT_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
                    "transformer.wpe.weight")
_PROTECT_AXIS = {"attn.c_attn.weight": "rows", "mlp.c_fc.weight": "rows",
                 "attn.c_proj.weight": "cols", "mlp.c_proj.weight": "cols"}


@dataclass
class SparseTensor:
    name: str
    param: nn.Parameter
    kind: str                      # "weight" | "embed" | "bias"
    protect: tuple | None = None   # (j, "rows"|"cols") or None


def classify(name: str) -> str | None:
    """The sparsity kind of a parameter name, or None for tensors that are never sparse."""
    if name.endswith(_WEIGHT_SUFFIXES):
        return "weight"
    if name in ("transformer.wte.weight", "lm_head.weight"):
        return "embed"
    if name.endswith(".bias"):
        return "bias"
    return None


def sparse_tensors(model: nn.Module, cfg: SparsityConfig) -> list[SparseTensor]:
    """The tensors that get a top-k budget under `cfg` (empty for a dense run), in parameter order."""
    if cfg.dense:
        return []
    out = []
    for name, p in model.named_parameters():
        kind = classify(name)
        if kind is None or (kind == "embed" and not cfg.sparse_embeddings) or (
                kind == "bias" and not cfg.sparse_biases):
            continue
        protect = None
        if cfg.protect_per_neuron > 0:
            axis = next((a for suffix, a in _PROTECT_AXIS.items() if name.endswith(suffix)), None)
            protect = (cfg.protect_per_neuron, axis) if axis else None
        out.append(SparseTensor(name, p, kind, protect))
    return out


def density_for(kind: str, step: int, total: int, cfg: SparsityConfig) -> float:
    return weight_density(step, total, cfg) if kind == "weight" else embed_density(step, total, cfg)


def current_ks(tensors: list[SparseTensor], step: int, total: int, cfg: SparsityConfig) -> dict[str, int]:
    """k of every sparse tensor at this step."""
    return {t.name: k_for(t.param.numel(), density_for(t.kind, step, total, cfg)) for t in tensors}


def param_groups(model: nn.Module, sparsity: SparsityConfig, train: TrainConfig) -> list[dict]:
    """SparseAdamW param groups: one group per sparse tensor (own k), then dense decayed / not decayed."""
    sparse = {t.name: t for t in sparse_tensors(model, sparsity)}
    groups: list[dict] = []
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        wd = train.weight_decay if (p.ndim >= 2 and not name.endswith("bigram_table")) else 0.0
        if name in sparse:
            groups.append(dict(params=[p], name=name, k=None, protect=sparse[name].protect, weight_decay=wd,
                               kind=sparse[name].kind))
        else:
            (decay if wd else no_decay).append(p)
    if decay:
        groups.append(dict(params=decay, name="dense_decay", k=None, weight_decay=train.weight_decay, kind=None))
    if no_decay:
        groups.append(dict(params=no_decay, name="dense_no_decay", k=None, weight_decay=0.0, kind=None))
    return groups


def check_protection(model: nn.Module, cfg: SparsityConfig) -> None:
    """Raise ConfigError when the final budget of a protected matrix is below j per neuron."""
    from ..errors import ConfigError
    for t in sparse_tensors(model, cfg):
        if t.protect is None:
            continue
        j, axis = t.protect
        neurons = t.param.shape[0] if axis == "rows" else t.param.shape[1]
        k = k_for(t.param.numel(), cfg.weight_density)
        if j * neurons > k:
            raise ConfigError(f"sparsity.protect_per_neuron={j} needs {j * neurons} entries in {t.name} but its "
                              f"final budget is k={k}; lower protect_per_neuron or raise weight_density")
