"""beeg_config.json (the released inference code's GPTConfig fields) <-> ModelConfig.

A key missing from a file takes the inference GPTConfig default (so a file without `rms_norm` describes a
LayerNorm model, which we refuse). Keys that cannot change the forward pass are ignored; a key we do not know
is an error, since it may change the architecture.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..sites import abstopk_widths

CONFIG_FILE = "beeg_config.json"

# The released inference GPTConfig's defaults: what a key missing from a file means.
DEFAULTS: dict[str, Any] = {
    "block_size": 1024, "vocab_size": 50304, "n_layer": 12, "n_head": 12, "d_model": 768, "d_head": None,
    "dropout": 0.0, "bias": True, "ln_bias": True, "rms_norm": False, "residual_activation_type": "identity",
    "activation_type": "gelu", "afrac": None, "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out",
    "debug_nans": False, "tied_unembed": True, "tokenizer_name": "tinypython_2k", "grad_checkpointing": True,
    "d_mlp": None, "enable_bigram_table": False, "learnable_bigram_table": False, "d_pos_emb": None,
    "dropout_cat_pos_emb": False, "sinusoidal_cat_pos_emb": False, "enable_sparse_kernels": False,
    "flash": True, "sink": False,
}

# Keys that do not change the inference forward pass: training knobs, kernel choices, debugging switches,
# dropout (off at inference), ln_bias (unused with RMSNorm), and the cat-pos-emb options (d_pos_emb decides).
IGNORED = frozenset({
    "pfrac", "expansion_factor", "expansion_factor_mlp", "afrac_approx", "ignore_dw_grad", "debug_exact_topk",
    "sparse_matmul_impl", "rtopk", "use_tied_aux_matrix", "flash", "grad_checkpointing", "dropout", "ln_bias",
    "enable_sparse_kernels", "tokenizer_name", "debug_nans", "dropout_cat_pos_emb", "sinusoidal_cat_pos_emb",
})

# Architecture settings accepted at one value only, with the reason any other value is refused.
REQUIRED: dict[str, tuple[Any, str]] = {
    "rms_norm": (True, "LayerNorm models are not supported"),
    "tied_unembed": (False, "tied embedding/unembedding is not supported"),
    "residual_activation_type": ("identity", "residual-stream activations are not supported"),
    "d_pos_emb": (None, "concatenated positional embeddings are not supported"),
    "bigram_table_rank": (None, "a low-rank bigram table is not supported"),
    "n_embd": (None, "n_embd is not supported; give the width as d_model"),
}

_INT_KEYS = ("block_size", "vocab_size", "n_layer", "n_head", "d_model")
_BOOL_KEYS = ("bias", "sink", "enable_bigram_table", "learnable_bigram_table")


def _js(value: Any) -> str:
    """A value as it is spelled in the JSON file (false, null, "relu")."""
    return json.dumps(value)


def _same(value: Any, want: Any) -> bool:
    return type(value) is type(want) and value == want


def to_model_config(raw: dict[str, Any], where: str = CONFIG_FILE) -> ModelConfig:
    """Our ModelConfig for an official config dict (learned_pos_emb is decided later, from wpe).

    Raises CheckpointError naming the key and value for anything we cannot reproduce exactly."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} must hold a JSON object, not {type(raw).__name__}")
    c = dict(raw)
    if "n_mlp" in c:  # the older released checkpoints name d_mlp n_mlp
        if c.get("d_mlp") is not None and c["d_mlp"] != c["n_mlp"]:
            raise CheckpointError(f"{where}: n_mlp={_js(c['n_mlp'])} and d_mlp={_js(c['d_mlp'])} disagree; "
                                  f"keep one of them")
        c["d_mlp"] = c.pop("n_mlp")
    unknown = [k for k in c if k not in DEFAULTS and k not in IGNORED and k not in REQUIRED]
    if unknown:
        k = unknown[0]
        raise CheckpointError(f"{where}: unknown key {k!r} (= {_js(c[k])}) may change the architecture, so the "
                              f"model cannot be imported (delete the key if it does not affect the forward pass)")
    c = {**DEFAULTS, **c}
    for key, (want, why) in REQUIRED.items():
        if key in c and not _same(c[key], want):
            raise CheckpointError(f"{where}: {key}={_js(c[key])}: {why}; only {key}={_js(want)} models "
                                  f"can be imported")
    for key in _INT_KEYS + ("d_head", "d_mlp"):
        v = c[key]
        if not (v is None and key in ("d_head", "d_mlp")) and (type(v) is not int or v <= 0):
            raise CheckpointError(f"{where}: {key}={_js(v)} must be a positive integer")
    for key in _BOOL_KEYS:
        if type(c[key]) is not bool:
            raise CheckpointError(f"{where}: {key}={_js(c[key])} must be true or false")
    if c["activation_type"] not in ("gelu", "relu"):
        raise CheckpointError(f"{where}: activation_type={_js(c['activation_type'])} is not supported; "
                              f"only \"gelu\" and \"relu\" are")
    afrac = c["afrac"]
    if afrac is not None and (type(afrac) not in (int, float) or not 0 < afrac <= 1):
        raise CheckpointError(f"{where}: afrac={_js(afrac)} must be null or a fraction in (0, 1]")
    if not isinstance(c["afrac_loctypes"], str):
        raise CheckpointError(f"{where}: afrac_loctypes={_js(c['afrac_loctypes'])} must be a comma-separated "
                              f"string")
    cfg = ModelConfig(
        vocab_size=c["vocab_size"], n_layer=c["n_layer"], d_model=c["d_model"], n_head=c["n_head"],
        d_head=c["d_head"] if c["d_head"] is not None else c["d_model"] // c["n_head"],
        d_mlp=c["d_mlp"] if c["d_mlp"] is not None else 4 * c["d_model"],
        block_size=c["block_size"], activation=c["activation_type"], bias=c["bias"], learned_pos_emb=False,
        sink=c["sink"], bigram_table=c["enable_bigram_table"], learnable_bigram_table=c["learnable_bigram_table"],
        afrac=1.0 if afrac is None else float(afrac),
        afrac_sites=tuple(s.strip() for s in c["afrac_loctypes"].split(",") if s.strip()),
    )
    try:
        cfg.validate()
        _check_afrac_k(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return cfg


def _check_afrac_k(cfg: ModelConfig) -> None:
    """The official AbsTopK keeps int(afrac * width) entries, ours at least 1: refuse the k = 0 case."""
    if cfg.afrac >= 1:
        return
    for site in cfg.afrac_sites:
        width = abstopk_widths(cfg)[site]
        if int(cfg.afrac * width) == 0:
            raise ConfigError(f"afrac={cfg.afrac} keeps int(afrac * {width}) = 0 entries at {site}; "
                              f"such a model outputs nothing there")


def from_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """The beeg_config.json dict (GPTConfig fields only) describing our ModelConfig."""
    if cfg.rms_norm_eps is not None:
        raise CheckpointError(f"model.rms_norm_eps={cfg.rms_norm_eps} cannot be exported: the official "
                              f"RMSNorm uses torch's default eps")
    try:
        _check_afrac_k(cfg)
    except ConfigError as e:
        raise CheckpointError(f"cannot export: {e}") from None
    return {
        "block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "d_model": cfg.d_model, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp,
        "dropout": 0.0, "bias": cfg.bias, "ln_bias": True, "rms_norm": True,
        "residual_activation_type": "identity", "activation_type": cfg.activation,
        "afrac": None if cfg.afrac >= 1 else cfg.afrac, "afrac_loctypes": ",".join(cfg.afrac_sites),
        "debug_nans": False, "tied_unembed": False, "tokenizer_name": "tinypython_2k",
        "grad_checkpointing": False, "enable_bigram_table": cfg.bigram_table,
        "learnable_bigram_table": cfg.learnable_bigram_table, "d_pos_emb": None,
        "dropout_cat_pos_emb": False, "sinusoidal_cat_pos_emb": False, "enable_sparse_kernels": False,
        "flash": True, "sink": cfg.sink,
    }
