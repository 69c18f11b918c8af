"""The README's numbers for the tiny preset, from one rerunnable command.

    python bench/tiny_results.py --out bench/results            # ~10-15 minutes on a 2-core CPU

Trains the `tiny` preset twice on the standard-library corpus (weight-sparse, and `--dense` with the same
architecture), evaluates both on the 20 tasks, prunes `single_double_quote` on both (target 0.15, mean
ablation), and writes tiny_results.json + tiny_results.md (and, with --screenshot, a PNG of the sparse circuit
viewer made by headless Chromium). Runs live in --runs (default runs/bench_tiny); finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def one_model(name: str, run_dir: Path, dense: bool, task: str, eval_pairs: int) -> dict:
    """Train (or reuse), evaluate and prune one tiny model with sparseformer.pipeline.run_pipeline."""
    from sparseformer.cli.train import run_info
    from sparseformer.config import apply_overrides, get_preset
    from sparseformer.pipeline import run_pipeline

    cfg = apply_overrides(get_preset("tiny"), ["train.device=cpu"] + (["sparsity.dense=true"] if dense else []))
    s = run_pipeline(cfg, run_dir, task=task, eval_pairs=eval_pairs, progress=False, fallback=False)
    circuit = dict(s["circuit"])
    if "error" not in circuit:
        circuit["prune_seconds"] = s["seconds"]["prune"]
    info = run_info(run_dir)
    rows = s["eval"]
    return {
        "name": name, "run": str(run_dir), "dense": dense, "steps": s["step"], "train_seconds": s["seconds"]["train"],
        "final_val_loss": s["val_loss"],
        "weight_density": weight_density(info),
        "total_nonzero": info["total_nonzero"], "total_params": info["total_params"],
        "all_at_k": info["all_at_k"],
        "eval": rows,
        "mean_task_loss": sum(r["loss"] for r in rows) / len(rows),
        "mean_task_accuracy": sum(r["accuracy"] for r in rows) / len(rows),
        "circuit": circuit,
    }


def weight_density(info: dict) -> float:
    """Nonzero fraction over the weight matrices (c_attn, c_proj, c_fc) of a run's `info`."""
    from sparseformer.model import param_kind
    weights = [t for t in info["tensors"] if param_kind(t["name"]) == "weight"]
    return sum(t["nonzero"] for t in weights) / sum(t["numel"] for t in weights)


def markdown(doc: dict) -> str:
    s, d = doc["models"]
    lines = [f"# tiny preset: sparse vs dense (commit {doc['commit']}, {doc['date']}, {doc['machine']})", "",
             f"Command: `{doc['command']}`", "",
             "| model | steps | weight density | nonzero params | final val loss | mean task loss | mean task acc | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for m in (s, d):
        lines.append(f"| {m['name']} | {m['steps']} | {m['weight_density']:.4f} | {m['total_nonzero']:,} / "
                     f"{m['total_params']:,} | {m['final_val_loss']:.4f} | {m['mean_task_loss']:.4f} | "
                     f"{m['mean_task_accuracy']:.3f} | {m['train_seconds']:.0f}"
                     + (" (reused a finished run) |" if m["train_seconds"] < 1 else " |"))
    lines += ["", "Task loss (mean per-sequence contrast loss, nats) and accuracy on the test pairs:", "",
              "| task | sparse loss | sparse acc | dense loss | dense acc |", "|---|---|---|---|---|"]
    for a, b in zip(s["eval"], d["eval"]):
        lines.append(f"| {a['task']} | {a['loss']:.4f} | {a['accuracy']:.3f} | {b['loss']:.4f} | {b['accuracy']:.3f} |")
    lines += ["", "Circuits (`sparseformer prune RUN --task single_double_quote`, target 0.15 per sequence, mean ablation):",
              "", "| model | full loss | circuit loss | reaches target | nodes | edges | necessity loss | random-circuit loss |",
              "|---|---|---|---|---|---|---|---|"]
    for m in (s, d):
        c = m["circuit"]
        if "error" in c:
            lines.append(f"| {m['name']} | not pruned: {c['error']} |  |  |  |  |  |  |")
            continue
        lines.append(f"| {m['name']} | {c['full_loss']:.4f} | {c['loss']:.4f} | {c['sufficient']} | {c['nodes']} | "
                     f"{c['edges']} | {c['necessity_loss']:.4f} | {c['random_loss']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--runs", default="runs/bench_tiny")
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--screenshot", default=None, help="PNG path for a screenshot of the sparse circuit viewer")
    ap.add_argument("--rebuild", action="store_true",
                    help="rewrite the markdown from an existing tiny_results.json (no training or pruning)")
    args = ap.parse_args()
    from sparseformer.checkpoint import atomic_write_text
    out = Path(args.out)
    if args.rebuild:
        from sparseformer.cli.train import run_info
        doc = json.loads((out / "tiny_results.json").read_text())
        for m in doc["models"]:
            m["weight_density"] = weight_density(run_info(Path(m["run"])))
        atomic_write_text(out / "tiny_results.json", json.dumps(doc, indent=2) + "\n")
        atomic_write_text(out / "tiny_results.md", markdown(doc))
        print(markdown(doc))
        return
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    models = [one_model("sparse", runs / "sparse", False, args.task, args.eval_pairs),
              one_model("dense", runs / "dense", True, args.task, args.eval_pairs)]
    doc = {"commit": _git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
           f"{os.cpu_count()} cores, torch {torch.__version__}", "command": "python bench/tiny_results.py "
           + " ".join(sys.argv[1:]), "models": models}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tiny_results.json", json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    atomic_write_text(out / "tiny_results.md", md)
    print(md)
    if args.screenshot and "viewer" in models[0]["circuit"]:
        from sparseformer.report.screenshot import screenshot
        screenshot(models[0]["circuit"]["viewer"], args.screenshot)
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
