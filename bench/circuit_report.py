"""Cleaned circuits and their faithfulness controls for the tasks a run learned, in one table.

    python bench/circuit_report.py RUN --out DIR [--tasks learned|NAME,...] [--target 0.15] [--trials 1]
        [--controls all|NAME,...] [--eval-pairs 256] [--viewers NAME,...]

For each task: `prune_task(..., clean=True, faithfulness=True)` (what `sparseformer prune RUN --task NAME
--faithfulness` runs) at the target loss, or, when the unpruned model's loss is above it, at 1.25 x that loss
(the row says so). `--tasks learned` takes every task with loss under 0.45 on --eval-pairs test pairs. Writes
DIR/circuits/NAME.json (the circuit documents; `sparseformer.report.viewer.write_viewer` rebuilds a viewer),
DIR/NAME.html for the tasks in --viewers, and DIR/circuit_report.md / .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

LEARNED = 0.45
RELAXED = 1.25


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def one_task(run, name: str, target: float, trials: int, controls) -> dict:
    from sparseformer.prune import prune_task, run_faithfulness, task_pairs
    from sparseformer.tasks import evaluate_batch
    _, test = task_pairs(run, name, n_train=1, n_test=64)           # the pairs prune_task scores on
    full_loss = evaluate_batch(run.model, test)["loss"]
    t = target if full_loss <= target else round(RELAXED * full_loss, 4)
    t0 = time.perf_counter()
    result = prune_task(run, name, target_loss=t, trials=trials, progress=False)
    prune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result.faithfulness = run_faithfulness(run, result.to_dict(), controls=controls)
    b = result.before_cleaning or {}
    return {"task": name, "target": t, "relaxed": t != target, "full_loss": result.full_loss, "loss": result.loss,
            "nodes": result.nodes, "edges": result.edges, "necessity_loss": result.necessity_loss,
            "nodes_before": b.get("nodes"), "edges_before": b.get("edges"), "loss_before": b.get("loss"),
            "clean_evals": b.get("evals"), "clean_seconds": b.get("seconds"), "prune_seconds": round(prune_s, 1),
            "faithfulness_seconds": round(time.perf_counter() - t0, 1),
            "controls": {c["name"]: {"status": c["status"], "verdict": c["verdict"]}
                         for c in result.faithfulness["controls"]}}, result


def markdown(doc: dict) -> str:
    rows = doc["tasks"]
    names = list(rows[0]["controls"]) if rows else []
    lines = [f"# Cleaned circuits and faithfulness: {doc['run']} (step {doc['step']})", "",
             f"Command: `{doc['command']}` (commit {doc['commit']}, {doc['date']}, {doc['machine']}).", "",
             "Target 0.15 per sequence, or 1.25 x the unpruned loss where the model does not reach 0.15 (marked *).",
             "Nodes/edges before cleaning are the bisected circuit's; every remaining node is necessary.", "",
             "| task | target | full loss | before: nodes / edges / loss | cleaned: nodes / edges / loss | necessity "
             "| cleaning s (evals) | prune s | controls s | " + " | ".join(names) + " |",
             "| --- " * (9 + len(names)) + "|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['target']:g}{'*' if r['relaxed'] else ''} | {r['full_loss']:.4f} | "
            f"{r['nodes_before']} / {r['edges_before']} / {r['loss_before']:.4f} | {r['nodes']} / {r['edges']} / "
            f"{r['loss']:.4f} | {r['necessity_loss']:.4f} | {r['clean_seconds']:.0f} ({r['clean_evals']}) | "
            f"{r['prune_seconds']:.0f} | {r['faithfulness_seconds']:.0f} | "
            + " | ".join(r["controls"][n]["status"] for n in names) + " |")
    lines += ["", "Verdicts:", ""]
    for r in rows:
        lines.append(f"- **{r['task']}**")
        lines += [f"  - {n}: {c['status']}: {c['verdict']}" for n, c in r["controls"].items()]
    skipped = doc.get("not_learned") or []
    if skipped:
        lines += ["", "Not learned (loss >= 0.45, not pruned): " + ", ".join(f"{t} {v:.3f}" for t, v in skipped)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", default="learned")
    ap.add_argument("--target", type=float, default=0.15)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--controls", default="all")
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--viewers", default="")
    args = ap.parse_args()
    import sys

    from sparseformer.checkpoint import atomic_write_text, load_run
    from sparseformer.prune import CONTROLS, write_outputs
    from sparseformer.tasks import evaluate

    run = load_run(args.run)
    rows = evaluate(run.model, run.tokenizer, "all", n=args.eval_pairs)
    losses = {r["task"]: r["loss"] for r in rows}
    names = [t for t, v in losses.items() if v < LEARNED] if args.tasks == "learned" else args.tasks.split(",")
    controls = CONTROLS if args.controls == "all" else args.controls.split(",")
    viewers = set(filter(None, args.viewers.split(",")))
    (args.out / "circuits").mkdir(parents=True, exist_ok=True)
    doc = {"run": str(args.run), "step": run.step, "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, torch {__import__('torch').__version__}",
           "command": "python bench/circuit_report.py " + " ".join(sys.argv[1:]), "eval": rows, "tasks": [],
           "not_learned": sorted((t, v) for t, v in losses.items() if v >= LEARNED and t not in names)}
    for name in names:
        row, result = one_task(run, name, args.target, args.trials, controls)
        write_outputs(run.path, result)
        json_path, html_path = write_outputs(args.out / "circuits", result)
        if name in viewers:
            html_path.replace(args.out / f"{name}.html")
        else:
            html_path.unlink()
        doc["tasks"].append(row)
        print(json.dumps({k: row[k] for k in ("task", "target", "nodes", "edges", "loss", "nodes_before",
                                              "edges_before")}), flush=True)
        atomic_write_text(args.out / "circuit_report.json", json.dumps(doc, indent=1) + "\n")
        atomic_write_text(args.out / "circuit_report.md", markdown(doc))


if __name__ == "__main__":
    main()
