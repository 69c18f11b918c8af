"""The results table: one JSON document (results.json) and its markdown rendering (results.md)."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

from ..checkpoint import atomic_write_text
from .compare import circuit_size, headline, matched_pairs, target_key
from .compare import __doc__ as COMPARE_DOC

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def _model_row(m, tasks: list[str], targets: list[float]) -> dict:
    spec, tc = m.spec, m.config.train
    row = {
        "name": spec.name, "kind": spec.kind, "width": spec.width,
        "pfrac": None if spec.dense else spec.pfrac, "afrac": None if spec.dense else spec.afrac,
        "n_layer": m.config.model.n_layer, "d_model": m.config.model.d_model, "d_mlp": m.config.model.d_mlp,
        "weight_density": 1.0 if spec.dense else m.config.sparsity.weight_density,
        "params": m.params, "nonzero": m.nonzero, "steps": tc.steps,
        "tokens": tc.steps * tc.batch_size * tc.seq_len,
        "train_minutes": None if m.train_s is None else round(m.train_s / 60, 2),
        "val_loss": m.val_loss, "run_dir": str(m.run_dir),
        "tasks": {e["task"]: {k: v for k, v in e.items() if k != "task"} for e in m.evals},
        "circuits": {},
    }
    for p in m.prunes:
        if "error" in p:
            row["circuits"][p["task"]] = {"error": p["error"]}
            continue
        row["circuits"][p["task"]] = {
            "full_loss": p["full_loss"], "n_nodes_total": p["n_nodes_total"], "seconds": p.get("seconds"),
            "targets": {target_key(e["target"]): {k: v for k, v in e.items() if k not in ("target", "kept")}
                        for e in p["targets"]},
        }
    row["prune_minutes"] = round(sum(p.get("seconds") or 0 for p in m.prunes) / 60, 2)
    row["circuit_size"] = {target_key(t): circuit_size(row, t, len(tasks)) for t in targets}
    return row


def build_results(cfg, result) -> dict:
    """Everything the sweep found, as one JSON-ready dict (see compare.py for the definitions)."""
    import torch
    targets = cfg.prune.all_targets
    models = [_model_row(m, result.tasks, targets) for m in result.models]
    comparison = {}
    for t in targets:
        pairs = matched_pairs(models, t)
        comparison[target_key(t)] = {"pairs": pairs, "headline": headline(pairs)}
    return {
        "sweep": {"name": cfg.name, "source": str(cfg.source) if cfg.source else None,
                  "budget": cfg.budget.describe(), "tasks": result.tasks, "target_loss": cfg.prune.target_loss,
                  "targets": targets, "config": cfg.to_dict()},
        "environment": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "python": sys.version.split()[0], "torch": torch.__version__,
                        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "complete": not result.interrupted and len(models) == len(cfg.models),
        "models": models,
        "comparison": {"method": " ".join(COMPARE_DOC.split()), "targets": comparison},
    }


def write_results(table: dict, out: Path) -> list[Path]:
    """results.json and results.md in `out` (atomic writes); returns their paths."""
    out = Path(out)
    paths = [out / RESULTS_JSON, out / RESULTS_MD]
    atomic_write_text(paths[0], json.dumps(table, indent=1) + "\n")
    atomic_write_text(paths[1], render_markdown(table))
    return paths


def _f(x, fmt: str = ".3f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _cell(model: dict, task: str, target: float) -> str:
    c = model["circuits"].get(task)
    if c is None:
        return "-"
    if "error" in c:
        return "n/a"
    e = c["targets"].get(target_key(target), {})
    return str(e["edges"]) if e.get("status") == "ok" else "unreached"


def render_markdown(t: dict) -> str:
    """The human-readable report of a results dict."""
    s, env = t["sweep"], t["environment"]
    models, tasks, targets = t["models"], s["tasks"], s["targets"]
    head = target_key(s["target_loss"])
    lines = [f"# Sweep `{s['name']}`", "",
             f"{env['date']}; {s['budget']}; {len(models)} models; python {env['python']}, torch {env['torch']}, "
             f"{env['cuda'] or 'CPU (' + env['processor'] + ')'}; {env['platform']}.", ""]
    if not t["complete"]:
        lines += ["**Incomplete sweep** (interrupted): run the same command again to continue.", ""]
    hl = t["comparison"]["targets"].get(head, {}).get("headline")
    lines += ["## Headline", "", _headline_sentence(hl, s["target_loss"]), ""]

    lines += ["## Models", "", "| model | kind | width | pfrac | afrac | layers | d_model | params | nonzero | steps "
              "| tokens | train min | prune min | val loss |", "|" + "---|" * 14]
    for m in models:
        lines.append(f"| {m['name']} | {m['kind']} | {m['width']:g} | {_f(m['pfrac'], 'g')} | {_f(m['afrac'], 'g')} "
                     f"| {m['n_layer']} | {m['d_model']} | {m['params']:,} | {m['nonzero']:,} | {m['steps']} "
                     f"| {m['tokens']:,} | {_f(m['train_minutes'], '.1f')} | {m['prune_minutes']:.1f} "
                     f"| {_f(m['val_loss'], '.4f')} |")

    lines += ["", "## Task loss of the unpruned models", "",
              "Mean per-sequence contrast loss on held-out pairs (accuracy in brackets); n/a: the task cannot be "
              "posed with the model's tokenizer.", "",
              "| task | " + " | ".join(m["name"] for m in models) + " |", "|" + "---|" * (len(models) + 1)]
    for task in tasks:
        cells = []
        for m in models:
            e = m["tasks"].get(task, {})
            cells.append("n/a" if "error" in e or not e else f"{e['loss']:.3f} ({e['accuracy']:.2f})")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")

    lines += ["", f"## Circuit edges at target loss {head}", "",
              "Edges of the pruned circuit per task; unreached: the unpruned model is above the target (left out "
              "of the geometric mean).", "",
              "| task | " + " | ".join(m["name"] for m in models) + " |", "|" + "---|" * (len(models) + 1)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(_cell(m, task, s["target_loss"]) for m in models) + " |")
    lines.append("| **geometric mean** | " + " | ".join(_size(m, head) for m in models) + " |")

    lines += ["", "## Circuit size against target loss", "",
              "Geometric-mean edges over the tasks each model reaches (reached/asked).", "",
              "| target | " + " | ".join(m["name"] for m in models) + " |", "|" + "---|" * (len(models) + 1)]
    for tg in targets:
        lines.append(f"| {tg:g} | " + " | ".join(_size(m, target_key(tg)) for m in models) + " |")

    lines += ["", "## Sparse vs dense at matched pretraining loss", "", t["comparison"]["method"], "",
              "| target | sparse | dense | loss sparse | loss dense | common tasks | edges sparse | edges dense "
              "| dense/sparse |", "|" + "---|" * 9]
    for tg in targets:
        for p in t["comparison"]["targets"][target_key(tg)]["pairs"]:
            lines.append(f"| {tg:g} | {p['sparse']} | {p['dense']} | {p['sparse_loss']:.4f} | {p['dense_loss']:.4f} "
                         f"| {len(p['common_tasks'])} | {_f(p['sparse_geomean'], '.0f')} "
                         f"| {_f(p['dense_geomean'], '.0f')} | {_f(p['ratio'], '.2f')} |")
    lines += ["", "Plots: `frontier.svg` (pretraining loss against geometric-mean circuit edges at the headline "
              "target) and `edges_vs_target.svg` (circuit edges against target loss).", ""]
    return "\n".join(lines)


def _size(m: dict, key: str) -> str:
    c = m["circuit_size"][key]
    return f"{_f(c['geomean'], '.0f')} ({c['n_tasks']}/{c['of']})"


def _headline_sentence(hl: dict | None, target: float) -> str:
    if hl is None:
        return (f"No sparse/dense pair shares a task both can do at target loss {target:g}, so no matched-loss "
                f"ratio is reported (the paper reports about 16x).")
    return (f"At target loss {target:g}, sparse `{hl['sparse']}` (val loss {hl['sparse_loss']:.4f}) and dense "
            f"`{hl['dense']}` (val loss {hl['dense_loss']:.4f}, gap {hl['loss_gap']:.4f}) have geometric-mean "
            f"circuits of {hl['sparse_geomean']:.0f} and {hl['dense_geomean']:.0f} edges over "
            f"{len(hl['common_tasks'])} common tasks: the dense circuits are **{hl['ratio']:.2f}x** the size of the "
            f"sparse ones (the paper reports about 16x at matched loss).")
