"""Run directories: checkpoint sets switched atomically, resume state, and loading a run for other commands.

A run directory holds (docs/reproducibility.md):
  config.json          the whole resolved RunConfig (resume reads only this)
  tokenizer.json       the run's tokenizer (optional for imported models)
  metrics.jsonl        one JSON object per logged step (appended; rows past the checkpoint go on resume)
  checkpoint.json      {"step", "dir"}: which checkpoint set is the current one
  checkpoints/step-S-XXXX/
    model.safetensors  model state dict; metadata: step
    optim.safetensors  SparseAdamW moments per parameter name; metadata: step (resume only)
    state.json         {"step", "ks": {tensor: k}, "finished", ...}
    NAME.safetensors   modules trained with the model (a bridged run's bridges.safetensors); metadata: step
  bridge.json          a bridged run's coupling to its dense run (docs/bridges.md)

A checkpoint set is written into a new directory that no reader looks at, synced, and only then made current
by atomically replacing checkpoint.json; the previous set is removed after that. So a crash or SIGKILL at
any moment leaves either the previous complete set or the new one, never a mix, and a failed write (a full
disk) leaves the previous one current. Run directories of the older layout (the three files directly in
the run directory, no checkpoint.json) are still read, and the first new checkpoint replaces them.
Every file read here that is missing, truncated or corrupt raises CheckpointError naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import faults
from .config import RunConfig
from .data._atomic import FILE_MODE, atomic_write, atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401
from .errors import CheckpointError, ConfigError, WriteError
from .model import GPT
from .runfiles import (CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, append_metrics, atomic_save_tensors,  # noqa: F401
                       config_difference, load_config, load_tensors, load_tokenizer, read_json, read_metrics,
                       save_config, truncate_metrics)

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optim.safetensors", "state.json"
POINTER_FILE, CHECKPOINTS_DIR = "checkpoint.json", "checkpoints"
SET_FILES = (MODEL_FILE, OPTIM_FILE, STATE_FILE)          # one checkpoint set, in the order written
BRIDGE_FILE = "bridge.json"
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE, POINTER_FILE, BRIDGE_FILE) + SET_FILES   # + the older layout's


# -- checkpoint sets -----------------------------------------------------------------------------------------

def checkpoint_dir(run_dir: Path) -> Path | None:
    """The directory holding the current checkpoint set: the one checkpoint.json names, the run directory
    itself for the older layout, None when the run has no checkpoint yet."""
    run_dir = Path(run_dir)
    pointer = run_dir / POINTER_FILE
    if pointer.exists():
        data = read_json(pointer)
        rel = data.get("dir")
        if not isinstance(rel, str) or Path(rel).parent != Path(CHECKPOINTS_DIR) or ".." in rel:
            raise CheckpointError(f"{pointer} is corrupt (no valid checkpoint directory); restore it")
        where = run_dir / rel
        if not where.is_dir():
            raise CheckpointError(f"{pointer} names {where}, which does not exist; restore it or retrain with --force")
        return where
    if (run_dir / MODEL_FILE).is_file() or (run_dir / STATE_FILE).is_file():
        return run_dir
    return None


def checkpoint_file(run_dir: Path, name: str) -> Path:
    """Where file `name` of the current checkpoint set is (a path that may not exist when there is none)."""
    return (checkpoint_dir(run_dir) or Path(run_dir)) / name


def write_checkpoint(run_dir: Path, step: int, model_tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     optim_tensors: dict[str, torch.Tensor] | None = None,
                     optim_meta: dict[str, str] | None = None,
                     module_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write one checkpoint set (state dicts, not modules: a distributed run gathers them and one rank calls
    this) and make it the current one atomically; returns its directory. `module_tensors` holds the state
    dicts of modules trained with the model, each written as NAME.safetensors. On failure the previous set
    stays current and the error (WriteError naming the file) says so."""
    run_dir = Path(run_dir)
    previous = _current_step(run_dir)
    meta = {"step": str(step)}
    root = run_dir / CHECKPOINTS_DIR
    tmp = final = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step:08d}-"))
        atomic_save_tensors(model_tensors, tmp / MODEL_FILE, meta)
        for name, tensors in (module_tensors or {}).items():
            atomic_save_tensors(tensors, tmp / f"{name}.safetensors", meta)
        if optim_tensors is not None:
            atomic_save_tensors(optim_tensors, tmp / OPTIM_FILE, {**meta, **(optim_meta or {})})
        atomic_write_text(tmp / STATE_FILE, json.dumps({**state, "step": step}, indent=2, sort_keys=True) + "\n")
        fsync_dir(tmp)
        final = root / tmp.name[1:]
        os.rename(tmp, final)
        tmp = None
        fsync_dir(root)
        pointer = {"step": step, "dir": f"{CHECKPOINTS_DIR}/{final.name}"}
        atomic_write_text(run_dir / POINTER_FILE, json.dumps(pointer) + "\n")    # the switch
    except BaseException as e:
        if final is not None and _names(run_dir, final):     # interrupted right after the switch: keep it
            raise
        for d in (tmp, final):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
        if isinstance(e, (WriteError, OSError)):
            kept = (f"the previous checkpoint (step {previous}) is still the current one" if previous is not None
                    else "no checkpoint of this run was saved before")
            raise WriteError(f"{e if isinstance(e, WriteError) else f'cannot write in {root}: {e}'}; {kept}") from e
        raise
    fsync_dir(run_dir)              # the switch reaches the disk before the older set is removed
    faults.point("switch")
    _remove_stale(run_dir, keep=final)
    return final


def _names(run_dir: Path, where: Path) -> bool:
    """Whether checkpoint.json names the directory `where`."""
    try:
        return checkpoint_dir(run_dir) == where
    except CheckpointError:
        return False


def _current_step(run_dir: Path) -> int | None:
    try:
        where = checkpoint_dir(run_dir)
        return None if where is None else int(read_state(run_dir).get("step", 0))
    except CheckpointError:
        return None


def _remove_stale(run_dir: Path, keep: Path) -> None:
    """After a switch: remove the older sets, leftovers of interrupted writes and the older layout's files."""
    for entry in (run_dir / CHECKPOINTS_DIR).iterdir():
        if entry == keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for name in SET_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for leftover in run_dir.glob(f".{POINTER_FILE}.*.tmp"):
        leftover.unlink(missing_ok=True)


def optimizer_tensors(states: dict[str, dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of optim.safetensors from {parameter name: {"step", "exp_avg", "exp_avg_sq"}}."""
    tensors, steps = {}, {}
    for name, st in states.items():
        tensors[f"{name}.exp_avg"] = st["exp_avg"]
        tensors[f"{name}.exp_avg_sq"] = st["exp_avg_sq"]
        steps[name] = int(st["step"])
    return tensors, {"steps": json.dumps(steps)}


def _param_names(model: torch.nn.Module, modules: dict[str, torch.nn.Module] | None) -> dict:
    """Parameter -> its name in optim.safetensors: the model's own names, NAME.param for module NAME's."""
    names = {p: n for n, p in model.named_parameters()}
    for prefix, module in (modules or {}).items():
        names.update({p: f"{prefix}.{n}" for n, p in module.named_parameters()})
    return names


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, step: int, ks: dict[str, int],
                    finished: bool, extra: dict[str, Any] | None = None,
                    modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Save model, optimizer moments (when `optimizer` is given), the `modules` trained with the model and
    state as one checkpoint set; see write_checkpoint."""
    optim_tensors = optim_meta = None
    if optimizer is not None:
        names = _param_names(model, modules)
        optim_tensors, optim_meta = optimizer_tensors({names[p]: st for p, st in optimizer.state.items()
                                                       if p in names and st})
    state = {"ks": ks, "finished": finished, **(extra or {})}
    module_tensors = {name: m.state_dict() for name, m in (modules or {}).items()}
    return write_checkpoint(run_dir, step, model.state_dict(), state, optim_tensors, optim_meta, module_tensors)


def remove_run(run_dir: Path) -> None:
    """Delete a run's files (for --force): every run file, the checkpoint sets, circuits/ and tasks/."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for sub in (CHECKPOINTS_DIR, "circuits", "tasks"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)


def read_state(run_dir: Path) -> dict[str, Any]:
    """state.json of the current checkpoint set ({"step": 0, ...} when the run has none)."""
    where = checkpoint_dir(run_dir)
    if where is None or (where == Path(run_dir) and not (where / STATE_FILE).is_file()):
        return {"step": 0, "ks": {}, "finished": False}      # no checkpoint, or an older-layout run without one
    state = read_json(where / STATE_FILE)
    if not isinstance(state.get("step"), int) or state["step"] < 0 or not isinstance(state.get("ks", {}), dict):
        raise CheckpointError(f"{where / STATE_FILE} is corrupt (no valid step); restore it or retrain with --force")
    return state


def _step_of(path: Path, meta: dict[str, str]) -> int:
    try:
        return int(meta.get("step", 0))
    except ValueError:
        raise CheckpointError(f"{path} is corrupt (its step is {meta.get('step')!r})") from None


def load_model_weights(run_dir: Path, model: torch.nn.Module, expect_step: int | None = None,
                       file: str = MODEL_FILE) -> int:
    """Load the current model.safetensors (or another file of the set) into `model` (strict); return its step."""
    path = checkpoint_file(run_dir, file)
    tensors, meta = load_tensors(path)
    step = _step_of(path, meta)
    if expect_step is not None and step != expect_step:
        raise CheckpointError(f"{path} is at step {step} but state.json says {expect_step}; "
                              f"the checkpoint is inconsistent")
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"config.json implies {tuple(own[name].shape)}")
    model.load_state_dict(tensors)
    return step


def load_module_weights(run_dir: Path, modules: dict[str, torch.nn.Module], expect_step: int | None = None) -> None:
    """Load NAME.safetensors of the current checkpoint set into each module NAME (strict, at `expect_step`)."""
    for name, module in modules.items():
        load_model_weights(run_dir, module, expect_step, file=f"{name}.safetensors")


def load_optimizer_state(run_dir: Path, model: torch.nn.Module, optimizer, expect_step: int,
                         place: Callable[[torch.nn.Parameter, torch.Tensor], torch.Tensor] | None = None,
                         modules: dict[str, torch.nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """Load the current optim.safetensors into `optimizer` (its moments must be at `expect_step`); the
    moments of `modules` trained with the model too. Returns every tensor of the file (the moments and any
    other resume state saved beside them, such as support-dW tracked sets). `place(p, whole)` turns a whole
    CPU moment of parameter p into what the optimizer holds (default: the tensor on p's device and dtype; a
    sharded run keeps its rows)."""
    place = place or (lambda p, whole: whole.to(p.device, p.dtype))
    path = checkpoint_file(run_dir, OPTIM_FILE)
    tensors, meta = load_tensors(path)
    if _step_of(path, meta) != expect_step:
        raise CheckpointError(f"{path} is at step {meta.get('step')} but the model is at "
                              f"{expect_step}; the checkpoint is inconsistent")
    try:
        steps = json.loads(meta.get("steps", "{}"))
        for p, name in _param_names(model, modules).items():
            if name in steps:
                optimizer.state[p] = {
                    "step": int(steps[name]),
                    "exp_avg": place(p, tensors[f"{name}.exp_avg"]),
                    "exp_avg_sq": place(p, tensors[f"{name}.exp_avg_sq"]),
                }
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}: {e}); restore it or retrain") from None
    return tensors


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
    if checkpoint_dir(path) is None:
        raise CheckpointError(f"{path} has no {MODEL_FILE}; the run has not saved a model yet")
    state = read_state(path)
    model = GPT(cfg.model)
    has_state = (checkpoint_dir(path) / STATE_FILE).is_file()
    step = load_model_weights(path, model, expect_step=state["step"] if has_state else None)
    tokenizer = load_tokenizer(path)
    model.to(resolve_device(device)).eval()
    return Run(path=path, config=cfg, model=model, tokenizer=tokenizer, step=step, state=state)
