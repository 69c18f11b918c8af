"""Configuration dataclasses, presets and typed overrides.

`RunConfig` groups `ModelConfig`, `SparsityConfig`, `TrainConfig` and `DataConfig`; docs/method.md explains
each setting and where its default comes from. Every field has a default; `validate()` raises ConfigError
naming the field, the value and the fix. `to_dict`/`from_dict` round-trip through JSON (config.json in a run
directory) and reject unknown keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .sites import ABSTOPK_NAMES

CONFIG_VERSION = 1

# AbsTopK names (the official checkpoints' location types), in forward order; sites.py maps each to its site.
AFRAC_SITES = ABSTOPK_NAMES
SWEEP_SITES = ("attn_in", "attn_out", "mlp_in", "mlp_out", "mlp_neuron", "attn_v")  # the released sweep models'
ACTIVATIONS = ("gelu", "relu")


@dataclass
class ModelConfig:
    vocab_size: int = 2048          # the paper's tinypython_2k tokenizer size
    n_layer: int = 8                # the paper's base model (docs/method.md, "Presets")
    d_model: int = 256              # 256 * width multiplier
    n_head: int = 16                # n_head * d_head = d_model in practice
    d_head: int = 16                # its own setting, not d_model / n_head
    d_mlp: int = 1024               # 4 * d_model by default
    block_size: int = 256           # max positions (the paper trains at context 256)
    activation: str = "gelu"        # "gelu" (exact erf) or "relu"
    bias: bool = True               # biases in every Linear except lm_head
    learned_pos_emb: bool = False   # added learned wpe (off in most experiments)
    sink: bool = False              # per-head attention sink logit (docs/method.md, "Architecture")
    bigram_table: bool = False      # dense vocab x vocab logit table
    learnable_bigram_table: bool = True
    afrac: float = 1.0              # AbsTopK keep fraction; 1.0 = off (docs/method.md, "AbsTopK")
    afrac_sites: tuple = SWEEP_SITES
    init_std: float = 0.02          # std of the weight init (docs/method.md, "Initialisation")
    rms_norm_eps: float | None = None  # None = torch.nn.RMSNorm's default

    def validate(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "d_head", "d_mlp", "block_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"model.{name}={v!r} must be a positive integer")
        if self.d_model % self.d_head != 0:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.d_head={self.d_head}; "
                              f"choose a d_head that divides d_model")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={self.activation!r} is unknown; choose one of {ACTIVATIONS}")
        if not 0 < self.afrac <= 1:
            raise ConfigError(f"model.afrac={self.afrac} must be in (0, 1] (1 turns AbsTopK off)")
        for site in self.afrac_sites:
            if site not in AFRAC_SITES:
                hint = difflib.get_close_matches(site, AFRAC_SITES, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; choose from {', '.join(AFRAC_SITES)}"
                raise ConfigError(f"unknown AbsTopK site {site!r}{extra}")

    @property
    def d_attn(self) -> int:
        """Width of the flat q/k/v vectors: n_head * d_head."""
        return self.n_head * self.d_head

    def afrac_k(self, width: int) -> int:
        """Entries kept by AbsTopK at a site of this width: int(afrac * width), at least 1."""
        return max(1, int(self.afrac * width))


@dataclass
class SparsityConfig:
    dense: bool = False               # True: no weight sparsity at all (the dense baseline)
    weight_density: float = 0.125     # final fraction kept of weight matrices and wpe (pfrac / e^2 in the paper)
    embed_density: float | None = None  # final fraction for wte, lm_head and biases; None = weight_density
    sparse_embeddings: bool = True    # top-k on wte and lm_head
    sparse_biases: bool = True        # top-k on every bias vector
    protect_per_neuron: int = 4       # j: each neuron keeps its j largest weights (0 = off)
    anneal_start: float = 0.01        # fraction of training where the L0 anneal starts (docs/method.md)
    anneal_end: float = 0.5           # ... and ends (0.8 for the largest/sparsest models)
    anneal_power: float = 1.0         # s <- 1 - (1 - s)^p; 1 = linear
    embed_schedule: str = "paper"     # "paper" (embeddings/biases dense until late) or "fixed" (docs/method.md)
    # weight gradients of the sparse linear layers (docs/support-dw.md): "dense" (the paper's) or "support"
    dw_mode: str = "dense"
    dense_every: int = 16             # support: a dense dW every N optimizer steps
    candidates: float = 1.0           # support: off-support entries tracked from each dense dW, x k
    dw_moments: str = "lazy"          # support: Adam moments of entries without a gradient: "lazy" | "decay"
    dw_rms: str = "tracked"           # support: gradient RMS over "tracked" entries (steady) or "all"

    def validate(self) -> None:
        for name in ("weight_density", "embed_density"):
            v = getattr(self, name)
            if v is None:
                continue
            if not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise ConfigError(f"sparsity.{name}={v!r} is outside (0, 1]; give a fraction of entries to keep, "
                                  f"e.g. 0.125")
        if not 0 <= self.anneal_start <= self.anneal_end <= 1:
            raise ConfigError(f"sparsity.anneal_start={self.anneal_start} and anneal_end={self.anneal_end} must "
                              f"satisfy 0 <= start <= end <= 1")
        if self.anneal_power <= 0:
            raise ConfigError(f"sparsity.anneal_power={self.anneal_power} must be positive")
        if self.embed_schedule not in ("paper", "fixed"):
            raise ConfigError(f"sparsity.embed_schedule={self.embed_schedule!r}; choose 'paper' or 'fixed'")
        if self.protect_per_neuron < 0:
            raise ConfigError(f"sparsity.protect_per_neuron={self.protect_per_neuron} must be >= 0")
        for name, allowed in (("dw_mode", ("dense", "support")), ("dw_moments", ("lazy", "decay")),
                              ("dw_rms", ("tracked", "all"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"sparsity.{name}={getattr(self, name)!r} is unknown; choose one of {allowed}")
        if not isinstance(self.dense_every, int) or self.dense_every < 1:
            raise ConfigError(f"sparsity.dense_every={self.dense_every!r} must be an integer >= 1 (1: dense every "
                              f"step, as dw_mode='dense')")
        if not isinstance(self.candidates, (int, float)) or self.candidates < 0:
            raise ConfigError(f"sparsity.candidates={self.candidates!r} must be >= 0 (a multiple of k)")
        if self.dense and self.dw_mode == "support":
            raise ConfigError("sparsity.dw_mode='support' needs sparse weights but sparsity.dense is true; "
                              "drop one of them")

    @property
    def final_embed_density(self) -> float:
        return self.weight_density if self.embed_density is None else self.embed_density


@dataclass
class TrainConfig:
    steps: int = 2000                 # optimizer steps
    batch_size: int = 32              # sequences per step
    seq_len: int = 256                # training context
    lr: float = 1.28e-2               # peak lr before the sharkfin factor (the released script's example)
    warmup_frac: float = 0.01         # fraction of steps in linear warmup
    sharkfin: bool = True             # multiply lr by sqrt(final density / current density)
    weight_decay: float = 0.1         # decoupled, >=2-D params except the bigram table (docs/method.md)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 0.1
    grad_rms_norm: bool = True        # always normalise the global gradient RMS to 1
    seed: int = 0
    device: str = "auto"              # "auto", "cpu", "cuda", "cuda:1", ...
    log_every: int = 10               # steps between metrics.jsonl rows
    eval_every: int = 100             # steps between validation losses (and at the end)
    eval_batches: int = 8
    ckpt_every: int = 200             # steps between checkpoints (and at the end)
    backend: str | None = None        # kernels backend override
    deterministic: bool = False       # CUDA: deterministic algorithms only (docs/reproducibility.md); the CPU always is

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "ckpt_every", "eval_batches"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"train.{name}={v!r} must be a positive integer")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be positive")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"train.warmup_frac={self.warmup_frac} must be in [0, 1)")


@dataclass
class DataConfig:
    source: str = "stdlib"            # "stdlib", a directory, a .jsonl file or a text file
    val_frac: float = 0.02            # fraction of files held out for validation
    max_tokenizer_bytes: int = 4_000_000
    seed: int | None = None           # validation split and tokenizer sample; None = train.seed

    def validate(self) -> None:
        if not 0 < self.val_frac < 1:
            raise ConfigError(f"data.val_frac={self.val_frac} must be in (0, 1)")
        if isinstance(self.seed, float) and self.seed.is_integer():
            self.seed = int(self.seed)              # `--set data.seed=1` parses as a float (the default is None)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ConfigError(f"data.seed={self.seed!r} must be an integer (or none: train.seed)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "custom"

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.sparsity.validate()
        self.train.validate()
        self.data.validate()
        if self.train.seq_len > self.model.block_size:
            raise ConfigError(f"train.seq_len={self.train.seq_len} exceeds model.block_size="
                              f"{self.model.block_size}; raise block_size or shorten seq_len")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["afrac_sites"] = list(self.model.afrac_sites)
        d["version"] = CONFIG_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d.pop("version", None)
        sections = {"model": ModelConfig, "sparsity": SparsityConfig, "train": TrainConfig, "data": DataConfig}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key == "preset":
                kwargs["preset"] = value
            elif key in sections:
                kwargs[key] = _build(sections[key], key, value)
            else:
                raise ConfigError(f"unknown config section {key!r}; expected {sorted(sections)}")
        return cls(**kwargs).validate()


def _build(klass, section: str, values: dict[str, Any]):
    names = {f.name for f in fields(klass)}
    for key in values:
        if key not in names:
            raise ConfigError(_unknown_key(f"{section}.{key}", [f"{section}.{n}" for n in names]))
    values = dict(values)
    if "afrac_sites" in values:
        values["afrac_sites"] = tuple(values["afrac_sites"])
    return klass(**values)


def _unknown_key(key: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    return f"unknown config key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")


# ---------------------------------------------------------------------------------------------------------
# Presets

def _tiny() -> RunConfig:
    """A model that trains on the stdlib corpus in about 6 minutes on a 2-core CPU and learns the quote task.

    Measured on that machine (bench/results/tiny_preset_probe/, 3M tokens): learned positions let a 2-layer
    model find the most recent opening quote (without them single_double_quote stayed near 0.6 nats); the
    bigram table takes the bigram statistics off the sparse weights; lr 2e-2 beat 1e-2 at 3,000 steps with
    half the steps. The context (block_size) is the training context, so task prompts are cut to the 128
    tokens the model was trained on."""
    return RunConfig(
        model=ModelConfig(n_layer=2, d_model=128, n_head=8, d_head=16, d_mlp=512, block_size=128, afrac=0.25,
                          afrac_sites=SWEEP_SITES, bigram_table=True, learned_pos_emb=True),
        sparsity=SparsityConfig(weight_density=1 / 8, embed_density=1 / 4, anneal_end=0.5),
        train=TrainConfig(steps=1500, batch_size=16, seq_len=128, lr=2e-2, eval_every=250, ckpt_every=250,
                          log_every=10, eval_batches=8),
        preset="tiny",
    )


def _small() -> RunConfig:
    """The tiny architecture at a 256-token context, trained for about an hour on a 2-core CPU.

    Chosen by measurement (bench/results/small_preset_probe/): at 2 threads the 2-layer d128 model runs
    4.8 steps/s at batch 8 x 256, a 4-layer one 2.8 and a d256 one 2.5, so in an hour the 2-layer model sees
    the most tokens (1.7x the 4-layer one's); a 15-minute run of it was still improving on most tasks. 17,000
    steps (35M tokens) took 55 minutes (bench/results/small_circuits/train_output.txt)."""
    cfg = _tiny()
    cfg.model.block_size = 256
    cfg.train = TrainConfig(steps=17000, batch_size=8, seq_len=256, lr=2e-2, eval_every=1000, ckpt_every=1000,
                            log_every=50, eval_batches=8)
    cfg.preset = "small"
    return cfg


def paper(width: float = 1.0, pfrac: float = 0.125, afrac: float = 0.125, n_layer: int = 8) -> RunConfig:
    """The paper's base model scaled by width multiplier e: d_model 256e, d_mlp 1024e, d_head 16.

    Fractions as in the paper: weights keep pfrac/e^2, embeddings and biases pfrac/e (capped at 1), so every
    tensor keeps pfrac times the entries of its 1x counterpart (docs/method.md, "Weight sparsity")."""
    d_model = int(256 * width)
    return RunConfig(
        model=ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 16, d_head=16, d_mlp=4 * d_model,
                          afrac=afrac, afrac_sites=SWEEP_SITES, bigram_table=True),
        sparsity=SparsityConfig(weight_density=min(1.0, pfrac / width ** 2), embed_density=min(1.0, pfrac / width)),
        train=TrainConfig(steps=20000, batch_size=64, seq_len=256, lr=1.28e-2),
        preset=f"paper-{width:g}x",
    )


PRESETS = {
    "tiny": _tiny,
    "small": _small,
    "paper-1x": lambda: paper(1.0),
    "paper-2x": lambda: paper(2.0, pfrac=0.25),
    "paper-4x": lambda: paper(4.0, pfrac=0.25, afrac=0.25),
}


def get_preset(name: str) -> RunConfig:
    """A fresh RunConfig for a named preset; ConfigError with suggestions for an unknown name."""
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, PRESETS, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown preset {name!r}{extra} (available: {', '.join(PRESETS)})")
    return PRESETS[name]()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` strings, parsed by the field's type; unknown keys raise with suggestions."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        if "." not in key:
            raise ConfigError(f"override key {key!r} needs a section, e.g. train.lr=3e-3")
        section, name = key.split(".", 1)
        obj = getattr(cfg, section, None)
        if obj is None or not dataclasses.is_dataclass(obj):
            raise ConfigError(f"unknown config section {section!r} in {item!r}")
        current = {f.name: f for f in fields(obj)}
        if name not in current:
            raise ConfigError(_unknown_key(key, [f"{section}.{n}" for n in current]))
        setattr(obj, name, _parse_value(raw, getattr(obj, name), key))
    return cfg.validate()


def _parse_value(raw: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, tuple):
            return tuple(s for s in raw.split(",") if s)
        if raw.lower() in ("none", "null"):
            return None
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float) or current is None:
            try:
                return float(raw)
            except ValueError:
                if current is None:
                    return raw
                raise
        return raw
    except ValueError:
        raise ConfigError(f"cannot parse {raw!r} for {key} (current value {current!r})") from None
