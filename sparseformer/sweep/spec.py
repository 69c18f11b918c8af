"""The sweep file: which models to train, on what budget, then which tasks to prune at which target losses.

A sweep file is TOML (Python >= 3.11) or JSON with these tables (every key but the model list is optional):

    [sweep]   name, data (corpus), device, seed, out (results dir), runs (run dirs); paths relative to the file
    [shape]   base_d_model (d_model at width 1; the paper's is 256), d_head, n_layer, mlp_ratio
    [base]    config overrides for every model, nested by section: [base.train] lr = 0.01
    [budget]  exactly one of: tokens, minutes, steps (per model)
    [grid]    width, pfrac, afrac: lists; their product is the set of weight-sparse models
    [[dense]] one table per dense baseline: width (and optionally n_layer, name, set)
    [[model]] extra models, any of: name, width, pfrac, afrac, dense, n_layer, set
              (`set` holds config overrides for that model alone, nested like [base]: set.train.lr = 0.005)
    [tasks]   names (list, or "all"), eval_pairs
    [prune]   target_loss (headline), targets (list for the edges-vs-target curves), steps, batch_pairs,
              train_pairs, test_pairs, trials, lr, k_coef, mean_tokens, calibrate, clean, seed

Width follows the paper's scaling: d_model = base_d_model * width, d_mlp = mlp_ratio * d_model, n_head = d_model/d_head.
Sparsity follows the paper's rule through `config.paper`: weights keep pfrac/width^2, embeddings and biases
pfrac/width, so models with the same pfrac have the same number of nonzeros at every width. A dense
model has no weight sparsity and no AbsTopK.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, paper
from ..errors import ConfigError

# Config fields the grid sets per model; [base] must not set them.
GRID_OWNED = ("model.d_model", "model.n_head", "model.d_head", "model.d_mlp", "model.n_layer", "model.afrac",
              "sparsity.dense", "sparsity.weight_density", "sparsity.embed_density", "train.steps")


@dataclass
class Shape:
    base_d_model: int = 256       # d_model at width 1 (the paper's base model)
    d_head: int = 16
    n_layer: int = 8
    mlp_ratio: int = 4


@dataclass
class Budget:
    tokens: int | None = None     # training tokens per model
    minutes: float | None = None  # wall-clock minutes per model (steps estimated by a timing probe)
    steps: int | None = None      # optimizer steps per model

    def validate(self) -> None:
        given = [k for k in ("tokens", "minutes", "steps") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"[budget] needs exactly one of tokens, minutes, steps (got {given or 'none'})")
        value = getattr(self, given[0])
        if not value > 0:
            raise ConfigError(f"budget.{given[0]}={value} must be positive")

    def describe(self) -> str:
        if self.tokens is not None:
            return f"{self.tokens:,} tokens per model"
        if self.minutes is not None:
            return f"{self.minutes:g} minutes per model"
        return f"{self.steps} steps per model"


@dataclass
class PruneSpec:
    target_loss: float = 0.15     # headline target, per-sequence task loss (docs/pruning.md)
    targets: tuple = (0.05, 0.15, 0.4)  # targets for the edges-vs-target curves (target_loss is added)
    steps: int = 200              # mask-training steps per trial
    batch_pairs: int = 64         # pairs per mask step (docs/pruning.md)
    train_pairs: int = 512        # task pairs the masks train on
    test_pairs: int = 128         # held-out pairs the bisection and the reported losses use
    trials: int = 1               # mask trainings per (model, task); the smallest circuit per target wins
    lr: float = 3e-3              # mask-training lr (the paper's search centre)
    k_coef: float = 1e-4          # weight of the kept-node count in the mask objective (Table 2 centre)
    mean_tokens: int = 32768      # pretraining tokens for the mean-ablation values
    calibrate: bool = False       # fit a logit scale + shift per circuit (docs/pruning.md)
    clean: bool = False           # clean each bisected circuit (one evaluation per node per pass; docs/pruning.md)
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_pairs", "train_pairs", "test_pairs", "trials", "mean_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"prune.{name}={v!r} must be a positive integer")
        for name in ("lr", "k_coef"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"prune.{name}={getattr(self, name)} must be positive")
        for t in (self.target_loss, *self.targets):
            if not (isinstance(t, (int, float)) and t > 0):
                raise ConfigError(f"prune target loss {t!r} must be a positive number (nats per sequence)")

    @property
    def all_targets(self) -> list[float]:
        """Every target, ascending, the headline one included once."""
        return sorted({float(t) for t in (*self.targets, self.target_loss)})


@dataclass
class ModelSpec:
    """One model of the sweep; `dense` models ignore pfrac and afrac."""
    name: str
    width: float
    pfrac: float | None = None
    afrac: float | None = None
    dense: bool = False
    n_layer: int | None = None    # None: [shape] n_layer
    overrides: dict[str, Any] = field(default_factory=dict)   # flat "section.field" -> value, after [base]

    @property
    def kind(self) -> str:
        return "dense" if self.dense else "sparse"


@dataclass
class SweepConfig:
    name: str
    models: list[ModelSpec]
    budget: Budget
    tasks: list[str]
    prune: PruneSpec = field(default_factory=PruneSpec)
    shape: Shape = field(default_factory=Shape)
    base: dict[str, Any] = field(default_factory=dict)     # flat "section.field" -> value
    data: str = "stdlib"
    device: str = "auto"
    seed: int = 0
    eval_pairs: int = 256
    out: Path | None = None
    runs: Path | None = None
    source: Path | None = None                              # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("out", "runs", "source"):
            d[key] = None if d[key] is None else str(d[key])
        d["prune"]["targets"] = list(self.prune.targets)
        return d


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file (.toml or .json)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; see bench/sweeps/ for examples")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"{path}: TOML needs Python >= 3.11; write the sweep as JSON instead") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML ({e})") from None
    elif path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        raise ConfigError(f"sweep file {path} must end in .toml or .json")
    return sweep_from_dict(raw, source=path)


_SECTIONS = ("sweep", "shape", "base", "budget", "grid", "dense", "model", "tasks", "prune")


def sweep_from_dict(raw: dict[str, Any], source: Path | None = None) -> SweepConfig:
    """Build a SweepConfig from the parsed file; unknown keys raise with a suggestion."""
    _check_keys(raw, _SECTIONS, "top-level table")
    head = dict(raw.get("sweep", {}))
    _check_keys(head, ("name", "data", "device", "seed", "out", "runs"), "[sweep]")
    shape = _dataclass(Shape, raw.get("shape", {}), "shape")
    budget = _dataclass(Budget, raw.get("budget", {}), "budget")
    budget.validate()
    prune_raw = dict(raw.get("prune", {}))
    if "targets" in prune_raw:
        prune_raw["targets"] = tuple(prune_raw["targets"])
    prune = _dataclass(PruneSpec, prune_raw, "prune")
    prune.validate()
    tasks_raw = dict(raw.get("tasks", {}))
    _check_keys(tasks_raw, ("names", "eval_pairs"), "[tasks]")
    names = tasks_raw.get("names", "all")
    tasks = [names] if isinstance(names, str) else list(names)
    if not tasks:
        raise ConfigError("[tasks] names is empty; list task names or give \"all\"")
    if not (isinstance(tasks_raw.get("eval_pairs", 1), int) and tasks_raw.get("eval_pairs", 1) > 0):
        raise ConfigError(f"tasks.eval_pairs={tasks_raw['eval_pairs']!r} must be a positive integer")
    base = _flatten(raw.get("base", {}))
    _check_not_owned(base, "[base]")
    here = source.parent if source is not None else Path.cwd()
    cfg = SweepConfig(
        name=str(head.get("name", source.stem if source is not None else "sweep")),
        models=_models(raw), budget=budget, tasks=tasks, prune=prune, shape=shape, base=base,
        data=str(head.get("data", "stdlib")), device=str(head.get("device", "auto")), seed=int(head.get("seed", 0)),
        eval_pairs=int(tasks_raw.get("eval_pairs", 256)),
        out=_near(here, head.get("out")), runs=_near(here, head.get("runs")),
        source=source)
    if cfg.data != "stdlib" and source is not None and not Path(cfg.data).is_absolute():
        candidate = here / cfg.data
        if candidate.exists():
            cfg.data = str(candidate)
    for m in cfg.models:  # fail now, not after an hour of training
        run_config(m, cfg, steps=1)
    return cfg


def _check_not_owned(overrides: dict[str, Any], where: str) -> None:
    owned = sorted(set(overrides) & set(GRID_OWNED))
    if owned:
        raise ConfigError(f"{where} sets {owned[0]}, which the sweep sets per model; use [shape], [grid] or "
                          f"[budget] instead")


def _models(raw: dict[str, Any]) -> list[ModelSpec]:
    models: list[ModelSpec] = []
    grid = dict(raw.get("grid", {}))
    _check_keys(grid, ("width", "pfrac", "afrac"), "[grid]")
    if grid:
        lists = {k: grid.get(k, d) for k, d in (("width", [1]), ("pfrac", [0.125]), ("afrac", [1.0]))}
        for k, v in lists.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"grid.{k}={v!r} must be a non-empty list, e.g. {k} = [1, 2]")
        for w, p, a in itertools.product(lists["width"], lists["pfrac"], lists["afrac"]):
            models.append(ModelSpec(name=f"sparse_w{w:g}_p{p:g}_a{a:g}", width=float(w), pfrac=float(p),
                                    afrac=float(a)))
    for i, d in enumerate(raw.get("dense", [])):
        where = f"[[dense]] #{i + 1}"
        _check_keys(d, ("width", "n_layer", "name", "set"), where)
        w = float(d.get("width", 1))
        models.append(ModelSpec(name=d.get("name", f"dense_w{w:g}" + (f"_l{d['n_layer']}" if "n_layer" in d else "")),
                                width=w, dense=True, n_layer=d.get("n_layer"), overrides=_model_set(d, where)))
    for i, d in enumerate(raw.get("model", [])):
        where = f"[[model]] #{i + 1}"
        _check_keys(d, [f.name for f in fields(ModelSpec) if f.name != "overrides"] + ["set"], where)
        if "name" not in d:
            raise ConfigError(f"{where} needs a name")
        values = {k: v for k, v in d.items() if k != "set"}
        models.append(ModelSpec(**{**values, "width": float(d.get("width", 1)), "overrides": _model_set(d, where)}))
    if not models:
        raise ConfigError("the sweep lists no models; add a [grid], [[dense]] or [[model]] table")
    seen: set[str] = set()
    for m in models:
        if m.name in seen:
            raise ConfigError(f"two models are named {m.name!r}; give each [[model]] a distinct name")
        seen.add(m.name)
        if not m.dense and (m.pfrac is None or m.pfrac <= 0):
            raise ConfigError(f"model {m.name}: a sparse model needs pfrac > 0 (or set dense = true)")
    return models


def _model_set(d: dict[str, Any], where: str) -> dict[str, Any]:
    overrides = _flatten(d.get("set", {}))
    _check_not_owned(overrides, f"{where} set")
    return overrides


def run_config(spec: ModelSpec, sweep: SweepConfig, steps: int) -> RunConfig:
    """The full training config of one model of the sweep, trained for `steps` steps."""
    sh = sweep.shape
    d_model = sh.base_d_model * spec.width
    if d_model != int(d_model) or int(d_model) % sh.d_head:
        raise ConfigError(f"model {spec.name}: d_model = {sh.base_d_model} * {spec.width:g} = {d_model:g} is not a "
                          f"multiple of d_head={sh.d_head}; change the width or shape.base_d_model")
    d_model = int(d_model)
    n_layer = spec.n_layer or sh.n_layer
    cfg = paper(spec.width, pfrac=spec.pfrac or 1.0, afrac=spec.afrac if spec.afrac is not None else 1.0,
                n_layer=n_layer)
    cfg.model.d_model, cfg.model.d_head = d_model, sh.d_head
    cfg.model.n_head, cfg.model.d_mlp = d_model // sh.d_head, sh.mlp_ratio * d_model
    if spec.dense:
        cfg.sparsity.dense = True
        cfg.model.afrac = 1.0
    cfg.data.source = sweep.data
    cfg.train.device = sweep.device
    cfg.train.seed = sweep.seed
    cfg.preset = f"sweep:{sweep.name}:{spec.name}"
    merged = {**sweep.base, **spec.overrides}
    overrides = [f"{k}={_as_override(v)}" for k, v in merged.items()] + [f"train.steps={int(steps)}"]
    try:
        cfg = apply_overrides(cfg, overrides)
    except ConfigError as e:
        raise ConfigError(f"model {spec.name}: {e}") from None
    return cfg     # a block_size under 256 is fine: evaluation and pruning cut prompts to the model's context


def _near(here: Path, path: str | None) -> Path | None:
    """A path from the sweep file, relative to the file's directory (normalised, still relative if `here` is)."""
    return None if path is None else Path(os.path.normpath(here / path))


def _as_override(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def _flatten(base: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"lr": 0.01}} or {"train.lr": 0.01} -> {"train.lr": 0.01}."""
    flat: dict[str, Any] = {}
    for key, value in base.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _dataclass(klass, values: dict[str, Any], section: str):
    _check_keys(values, [f.name for f in fields(klass)], f"[{section}]")
    try:
        return klass(**values)
    except TypeError as e:
        raise ConfigError(f"[{section}]: {e}") from None


def _check_keys(values: dict[str, Any], known, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table, got {type(values).__name__}")
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1)
            raise ConfigError(f"unknown key {key!r} in {where}" + (f"; did you mean {hint[0]!r}?" if hint else
                                                                    f"; known keys: {', '.join(known)}"))
