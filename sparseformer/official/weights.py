"""final_model.pt <-> our state dict: key names, the shapes a config implies, dense/COO layouts, dtypes.

Our module names are the official ones except the sink logit, which the official code keeps one level
deeper (transformer.h.L.attn.attn_imp.sink_logit). The official forward always adds wpe[:T]; we keep wpe
only when it is not all zero (learned_pos_emb) and write zeros back on export.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import CheckpointError
from ..model import param_kind

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "final_model.pt"
WPE = "transformer.wpe.weight"
_SINK_OURS, _SINK_OFFICIAL = ".attn.sink_logit", ".attn.attn_imp.sink_logit"


def to_official_name(name: str) -> str:
    return name[: -len(_SINK_OURS)] + _SINK_OFFICIAL if name.endswith(_SINK_OURS) else name


def from_official_name(key: str) -> str:
    return key[: -len(_SINK_OFFICIAL)] + _SINK_OURS if key.endswith(_SINK_OFFICIAL) else key


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of final_model.pt for this config, official names, in the official order."""
    d, a, m, V = cfg.d_model, cfg.d_attn, cfg.d_mlp, cfg.vocab_size
    out: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, d), WPE: (cfg.block_size, d)}
    for L in range(cfg.n_layer):
        p = f"transformer.h.{L}."
        linears = {"attn.c_attn": (3 * a, d), "attn.c_proj": (d, a), "mlp.c_fc": (m, d), "mlp.c_proj": (d, m)}
        out[p + "ln_1.weight"] = (d,)
        for name, shape in linears.items():
            if name == "mlp.c_fc":
                out[p + "ln_2.weight"] = (d,)
            out[f"{p}{name}.weight"] = shape
            if cfg.bias:
                out[f"{p}{name}.bias"] = shape[:1]
            if name == "attn.c_proj" and cfg.sink:
                out[p + "attn.attn_imp.sink_logit"] = (cfg.n_head,)
    out["transformer.ln_f.weight"] = (d,)
    out["lm_head.weight"] = (V, d)
    out["final_logits_bias"] = (V,)
    if cfg.bigram_table:
        out["bigram_table"] = (V, V)
    return out


def read_weights(path: Path) -> dict[str, Tensor]:
    """torch.load (weights_only) a state dict of tensors; CheckpointError if it is not one."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean the same thing here
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a readable torch state dict ({type(e).__name__}: {msg[:200]})") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a dict of name -> tensor)")
    return sd


def _shape(s) -> str:
    return "[" + ", ".join(str(int(x)) for x in s) + "]"


def check_tensors(sd: dict[str, Tensor], cfg: ModelConfig, where: str, config_name: str) -> None:
    """Every expected tensor present with the shape the config implies, and nothing else."""
    want = expected_shapes(cfg)
    for key, t in sd.items():
        if key not in want:
            raise CheckpointError(f"{where}: tensor {key} {_shape(t.shape)} is not part of the model {config_name} "
                                  f"describes; the config does not match the weights")
    for key, shape in want.items():
        if key not in sd:
            raise CheckpointError(f"{where}: tensor {key} is missing ({config_name} implies shape {_shape(shape)})")
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(f"{where}: tensor {key} has shape {_shape(sd[key].shape)} but {config_name} "
                                  f"implies {_shape(shape)}; the config does not match the weights")
        if not sd[key].dtype.is_floating_point:
            raise CheckpointError(f"{where}: tensor {key} has dtype {sd[key].dtype}; expected a float tensor")


def densify(sd: dict[str, Tensor], where: str) -> tuple[dict[str, Tensor], dict[str, dict[str, str]]]:
    """Dense copies of every tensor, and each one's stored {"layout": "dense"|"coo", "dtype": ...}."""
    dense, layouts = {}, {}
    for key, t in sd.items():
        if t.layout == torch.sparse_coo:
            d = t.to_dense()
            canon = d.to_sparse()
            if not (t.is_coalesced() and t.dense_dim() == 0 and torch.equal(t.indices(), canon.indices())):
                logger.warning("%s: COO tensor %s is uncoalesced, hybrid or stores zeros; export writes it in "
                               "canonical COO form (same values)", where, key)
            layouts[key] = {"layout": "coo", "dtype": str(t.dtype).removeprefix("torch.")}
        elif t.layout == torch.strided:
            d = t
            layouts[key] = {"layout": "dense", "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            raise CheckpointError(f"{where}: tensor {key} has layout {t.layout}; only dense and sparse COO "
                                  f"tensors are supported")
        dense[key] = d.contiguous()
    return dense, layouts


def is_all_zero(t: Tensor) -> bool:
    """True when every entry is +0.0 (a -0.0 or NaN counts as nonzero, so zeros round-trip bit for bit)."""
    return not bool(((t != 0) | torch.signbit(t)).any())


def _coo_pays(t: Tensor) -> bool:
    """COO (int64 indices + values) is smaller than the dense tensor."""
    nnz = int(torch.count_nonzero(t))
    return nnz * (8 * t.ndim + t.element_size()) < t.numel() * t.element_size()


def to_official(state: dict[str, Tensor], cfg: ModelConfig, layouts: dict[str, dict[str, str]] | None = None,
                mode: str = "original") -> dict[str, Tensor]:
    """The official state dict of our model's `state` (our names).

    mode "original": each tensor in the layout and dtype it was imported with (dense float32 otherwise);
    "dense": every tensor dense; "coo": the sparse kinds (weights, embeddings, biases, wpe) as COO wherever
    that is smaller. Dtypes recorded at import are restored in every mode."""
    if mode not in ("original", "dense", "coo"):
        raise ValueError(f"mode must be 'original', 'dense' or 'coo', got {mode!r}")
    layouts = layouts or {}
    shapes = expected_shapes(cfg)
    order = list(layouts) if set(layouts) == set(shapes) else list(shapes)   # the imported file's key order
    out: dict[str, Tensor] = {}
    for key in order:
        shape = shapes[key]
        dtype = getattr(torch, layouts.get(key, {}).get("dtype", "float32"))
        if key == WPE and not cfg.learned_pos_emb:
            t = torch.zeros(shape, dtype=dtype)
        else:
            t = state[from_official_name(key)].detach().cpu().to(dtype).clone()
        if mode == "original":
            coo = layouts.get(key, {}).get("layout") == "coo"
        else:
            coo = mode == "coo" and param_kind(from_official_name(key)) is not None and _coo_pays(t)
        out[key] = t.to_sparse() if coo else t.contiguous()
    return out
