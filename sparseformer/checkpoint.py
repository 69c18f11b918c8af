"""Run directories: atomic safetensors checkpoints, resume state, and loading a run for other commands.

A run directory holds:
  config.json          the whole resolved RunConfig (resume reads only this)
  tokenizer.json       the run's tokenizer (optional for imported models)
  model.safetensors    model state dict; metadata: step
  optim.safetensors    SparseAdamW moments per parameter name; metadata: step (resume only)
  state.json           {"step", "ks": {tensor: k}, "finished", ...}, written last
  metrics.jsonl        one JSON object per logged step
Every file is written to a temp name in the same directory and renamed, so a crash never leaves a
half-written file; the step stored in each file is checked on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .data._atomic import FILE_MODE, atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)
from .errors import CheckpointError, ConfigError
from .model import GPT

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optim.safetensors", "state.json"
CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE = "config.json", "tokenizer.json", "metrics.jsonl"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; CheckpointError when it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {path.parent} a run directory?")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); retrain or restore it") from None


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, cfg.to_json() + "\n")


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with "
                              f"`sparseformer train --out {run_dir}`")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def config_difference(run_dir: Path, want: RunConfig, ignore: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first setting (a dotted key such as "train.lr") in which the run saved in `run_dir` differs from
    `want`, as (key, saved value, wanted value); None when they agree. `preset`, `version` and `ignore` never count."""
    have = json.loads(json.dumps(load_config(run_dir).to_dict()))
    wanted = json.loads(json.dumps(want.to_dict()))
    skip = {"preset", "version", *ignore}
    for key in _flat_keys(wanted):
        if key not in skip and _dotted(have, key) != _dotted(wanted, key):
            return key, _dotted(have, key), _dotted(wanted, key)
    return None


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _dotted(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, step: int, ks: dict[str, int],
                    finished: bool, extra: dict[str, Any] | None = None) -> None:
    """Model, optimizer moments and state.json (last), each atomically; all stamped with `step`."""
    run_dir = Path(run_dir)
    meta = {"step": str(step)}
    atomic_save_tensors(model.state_dict(), run_dir / MODEL_FILE, meta)
    if optimizer is not None:
        names = {p: n for n, p in model.named_parameters()}
        moments: dict[str, torch.Tensor] = {}
        steps: dict[str, int] = {}
        for p, st in optimizer.state.items():
            if p in names and st:
                moments[f"{names[p]}.exp_avg"] = st["exp_avg"]
                moments[f"{names[p]}.exp_avg_sq"] = st["exp_avg_sq"]
                steps[names[p]] = int(st["step"])
        atomic_save_tensors(moments, run_dir / OPTIM_FILE, {**meta, "steps": json.dumps(steps)})
    state = {"step": step, "ks": ks, "finished": finished, **(extra or {})}
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return {"step": 0, "ks": {}, "finished": False}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is corrupt; restore it or retrain with --force") from None


def load_model_weights(run_dir: Path, model: torch.nn.Module, expect_step: int | None = None) -> int:
    """Load model.safetensors into `model` (strict); return its step."""
    tensors, meta = load_tensors(Path(run_dir) / MODEL_FILE)
    step = int(meta.get("step", 0))
    if expect_step is not None and step != expect_step:
        raise CheckpointError(f"{run_dir}/{MODEL_FILE} is at step {step} but state.json says {expect_step}; "
                              f"the checkpoint is inconsistent")
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{run_dir}/{MODEL_FILE} does not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise CheckpointError(f"{run_dir}/{MODEL_FILE}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(own[name].shape)}")
    model.load_state_dict(tensors)
    return step


def load_optimizer_state(run_dir: Path, model: torch.nn.Module, optimizer, expect_step: int) -> None:
    tensors, meta = load_tensors(Path(run_dir) / OPTIM_FILE)
    if int(meta.get("step", -1)) != expect_step:
        raise CheckpointError(f"{run_dir}/{OPTIM_FILE} is at step {meta.get('step')} but the model is at "
                              f"{expect_step}; the checkpoint is inconsistent")
    steps = json.loads(meta.get("steps", "{}"))
    for name, p in model.named_parameters():
        if name in steps:
            optimizer.state[p] = {
                "step": steps[name],
                "exp_avg": tensors[f"{name}.exp_avg"].to(p.device, p.dtype),
                "exp_avg_sq": tensors[f"{name}.exp_avg_sq"].to(p.device, p.dtype),
            }


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


@dataclass
class Run:
    """A loaded run directory: model (eval mode), config, tokenizer (None if absent), path, step."""
    path: Path
    config: RunConfig
    model: GPT
    tokenizer: Any
    step: int
    state: dict[str, Any]


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run directory for evaluation, pruning or inspection."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"run directory {path} does not exist")
    cfg = load_config(path)
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE}; the run has not saved a model yet")
    state = read_state(path)
    model = GPT(cfg.model)
    step = load_model_weights(path, model)
    tokenizer = None
    if (path / TOKENIZER_FILE).is_file():
        from .data.tokenizer import Tokenizer
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    model.to(resolve_device(device)).eval()
    return Run(path=path, config=cfg, model=model, tokenizer=tokenizer, step=step, state=state)
