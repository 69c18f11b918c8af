"""Run a sweep: train each model (or reuse/resume it), evaluate it on the tasks, prune it at every target.

Layout:
    OUT/results.json, results.md, frontier.svg, edges_vs_target.svg     (table.py, plots.py)
    RUNS/<model>/                       an ordinary run directory (train.py), plus
    RUNS/<model>/sweep/eval.json        task evaluations, keyed by the run's config and step
    RUNS/<model>/sweep/prune/<task>.json  circuits at every target, keyed by config, step and prune settings
    RUNS/<model>/sweep/timing.json      wall-clock seconds spent training (summed over resumes)

Resume: a model whose state.json says finished is not retrained, an unfinished one is resumed, and every
evaluation or pruning whose key still matches is read back instead of recomputed. A run directory trained
with a different config is an error (`force=True` retrains every model from scratch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint as ckpt
from ..config import RunConfig
from ..errors import ConfigError, TaskError
from . import adapters
from .budget import probe_steps_per_s, steps_for_minutes, steps_for_tokens
from .spec import ModelSpec, SweepConfig, run_config

log = logging.getLogger(__name__)

CACHE_DIR = "sweep"


@dataclass
class ModelOutcome:
    """Everything the results table needs about one model."""
    spec: ModelSpec
    run_dir: Path
    config: RunConfig
    trained_now: bool = False
    train_s: float | None = None
    val_loss: float | None = None
    params: int = 0
    nonzero: int = 0
    evals: list[dict] = field(default_factory=list)
    prunes: list[dict] = field(default_factory=list)   # one per task: adapters.prune_targets' dict or {task, error}


@dataclass
class SweepResult:
    out: Path
    runs: Path
    models: list[ModelOutcome]
    tasks: list[str]
    interrupted: bool = False
    files: list[Path] = field(default_factory=list)


def default_dirs(cfg: SweepConfig, out: Path | None, runs: Path | None) -> tuple[Path, Path]:
    """OUT: --out, else [sweep] out, else a directory named after the sweep file next to it.
    RUNS: --runs, else [sweep] runs, else OUT/runs."""
    if out is None:
        out = cfg.out
    if out is None:
        out = (cfg.source.parent / cfg.source.stem) if cfg.source is not None else Path(cfg.name)
    if runs is None:
        runs = cfg.runs if cfg.runs is not None else out / "runs"
    return Path(out), Path(runs)


def run_sweep(cfg: SweepConfig, out: Path | None = None, runs: Path | None = None, *, force: bool = False,
              progress: bool = True) -> SweepResult:
    """Train, evaluate and prune every model of the sweep, then write the results table and plots."""
    from .plots import write_plots
    from .table import build_results, write_results
    out, runs = default_dirs(cfg, out, runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    tasks = adapters.task_names(cfg.tasks)
    result = SweepResult(out=out, runs=runs, models=[], tasks=tasks)
    for i, spec in enumerate(cfg.models):
        log.info("[%d/%d] %s", i + 1, len(cfg.models), spec.name)
        outcome = _train(spec, cfg, runs / spec.name, force=force, progress=progress)
        if outcome is None:
            result.interrupted = True
            log.warning("sweep interrupted while training %s; run the same command again to continue", spec.name)
            break
        _evaluate_and_prune(outcome, cfg, tasks, progress=progress)
        result.models.append(outcome)
    table = build_results(cfg, result)
    result.files = write_results(table, out) + write_plots(table, out)
    return result


# ---------------------------------------------------------------------------------------------------------
# Training

def plan_config(spec: ModelSpec, cfg: SweepConfig, run_dir: Path, *, force: bool = False) -> RunConfig:
    """The model's full config with its step count resolved from the budget (minutes: probed once and
    then read back from the run directory)."""
    b = cfg.budget
    if b.steps is not None:
        return run_config(spec, cfg, b.steps)
    if b.tokens is not None:
        probe = run_config(spec, cfg, 1)
        return run_config(spec, cfg, steps_for_tokens(probe, b.tokens))
    if (run_dir / ckpt.CONFIG_FILE).is_file() and not force:
        return run_config(spec, cfg, ckpt.load_config(run_dir).train.steps)
    probe = run_config(spec, cfg, 1)
    rate = probe_steps_per_s(probe, run_dir.parent / f".probe-{spec.name}")
    steps = steps_for_minutes(probe, b.minutes, rate)
    log.info("%s: %.2f steps/s in the probe -> %d steps for %g minutes", spec.name, rate, steps, b.minutes)
    return run_config(spec, cfg, steps)


def config_fingerprint(run_dir: Path) -> str:
    """A short hash of the run's config.json: caches made for another config are not reused."""
    return hashlib.sha256((run_dir / ckpt.CONFIG_FILE).read_bytes()).hexdigest()[:16]


def _train(spec: ModelSpec, cfg: SweepConfig, run_dir: Path, *, force: bool, progress: bool) -> ModelOutcome | None:
    from ..train import train
    run_cfg = plan_config(spec, cfg, run_dir, force=force)
    state = ckpt.read_state(run_dir) if run_dir.is_dir() else {"finished": False}
    exists = (run_dir / ckpt.CONFIG_FILE).is_file()
    if exists and not force:
        _check_same_config(run_dir, run_cfg)
    timing_path = run_dir / CACHE_DIR / "timing.json"
    timing = _read_json(timing_path) or {}
    trained_now = False
    if force or not state.get("finished"):
        if force:
            shutil.rmtree(run_dir / CACHE_DIR, ignore_errors=True)
            timing = {}
        resume = exists and not force
        log.info("%s: %s training (%d steps)", spec.name, "resuming" if resume else "starting", run_cfg.train.steps)
        t0 = time.perf_counter()
        res = train(run_cfg, run_dir, resume=resume, force=force, progress=progress)
        timing["train_s"] = round(timing.get("train_s", 0.0) + time.perf_counter() - t0, 1)
        _write_json(timing_path, timing)
        trained_now = True
        if res.interrupted:
            return None
    else:
        log.info("%s: already trained (step %s); reusing it", spec.name, state.get("step"))
    outcome = ModelOutcome(spec=spec, run_dir=run_dir, config=run_cfg, trained_now=trained_now,
                           train_s=timing.get("train_s"), val_loss=_last_val_loss(run_dir))
    return outcome


def _check_same_config(run_dir: Path, planned: RunConfig) -> None:
    diff = ckpt.config_difference(run_dir, planned)
    if diff:
        key, have, want = diff
        raise ConfigError(f"{run_dir} was trained with {key}={have!r} but the sweep now asks for "
                          f"{want!r}; pass --force to retrain, or point --runs at a new directory")


def _last_val_loss(run_dir: Path) -> float | None:
    val = [row["val_loss"] for row in ckpt.read_metrics(run_dir) if "val_loss" in row]
    return val[-1] if val else None


# ---------------------------------------------------------------------------------------------------------
# Evaluation and pruning, cached in RUN/sweep/

def _evaluate_and_prune(outcome: ModelOutcome, cfg: SweepConfig, tasks: list[str], *, progress: bool) -> None:
    import torch
    run = ckpt.load_run(outcome.run_dir, device=cfg.device if cfg.device != "auto" else
                        ("cuda" if torch.cuda.is_available() else "cpu"))
    outcome.params = sum(p.numel() for p in run.model.parameters())
    outcome.nonzero = sum(int(torch.count_nonzero(p)) for p in run.model.parameters())
    fp = config_fingerprint(outcome.run_dir)
    cache = outcome.run_dir / CACHE_DIR

    key = {"config": fp, "step": run.step, "n": cfg.eval_pairs, "seed": cfg.seed}
    stored = _read_json(cache / "eval.json") or {}
    rows = stored.get("rows", {}) if stored.get("key") == key else {}
    for name in [t for t in tasks if t not in rows]:
        rows[name] = adapters.evaluate_tasks(run, [name], n=cfg.eval_pairs, seed=cfg.seed)[0]
        _write_json(cache / "eval.json", {"key": key, "rows": rows})
    outcome.evals = [rows[t] for t in tasks]

    p = cfg.prune
    settings = {"steps": p.steps, "batch_pairs": p.batch_pairs, "train_pairs": p.train_pairs,
                "test_pairs": p.test_pairs, "trials": p.trials, "mean_tokens": p.mean_tokens,
                "calibrate": p.calibrate, "clean": p.clean, "seed": p.seed, "lr": p.lr, "k_coef": p.k_coef}
    pkey = {"config": fp, "step": run.step, "targets": p.all_targets, **settings}
    for ev in outcome.evals:
        name = ev["task"]
        if "error" in ev:
            outcome.prunes.append({"task": name, "error": ev["error"]})
            continue
        path = cache / "prune" / f"{name}.json"
        stored = _read_json(path) or {}
        if stored.get("key") == pkey:
            outcome.prunes.append(stored["result"])
            continue
        log.info("%s: pruning %s at targets %s", outcome.spec.name, name, p.all_targets)
        try:
            res = adapters.prune_targets(run, name, p.all_targets, progress=progress, **settings)
        except TaskError as e:
            res = {"task": name, "error": str(e)}
        _write_json(path, {"key": pkey, "result": res})
        outcome.prunes.append(res)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring unreadable cache file %s", path)
        return None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def describe_plan(cfg: SweepConfig, runs: Path) -> list[dict]:
    """What the sweep would train, without training or probing: one dict per model (steps is None for a
    minutes budget that has not been probed yet)."""
    rows = []
    for spec in cfg.models:
        run_dir = runs / spec.name
        if cfg.budget.minutes is not None and not (run_dir / ckpt.CONFIG_FILE).is_file():
            rc, steps = run_config(spec, cfg, 1), None
        else:
            rc = plan_config(spec, cfg, run_dir)
            steps = rc.train.steps
        state = ckpt.read_state(run_dir) if run_dir.is_dir() else {}
        rows.append({"name": spec.name, "kind": spec.kind, "width": spec.width, "pfrac": spec.pfrac,
                     "afrac": spec.afrac, "n_layer": rc.model.n_layer, "d_model": rc.model.d_model,
                     "weight_density": 1.0 if spec.dense else rc.sparsity.weight_density, "steps": steps,
                     "tokens": None if steps is None else steps * rc.train.batch_size * rc.train.seq_len,
                     "status": "finished" if state.get("finished") else
                     ("partial" if (run_dir / ckpt.CONFIG_FILE).is_file() else "new")})
    return rows
