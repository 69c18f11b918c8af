"""Cleaned circuits and their faithfulness controls for the tasks a run learned, in one table.

    python bench/circuit_report.py RUN --out DIR [--tasks learned|NAME,...] [--target 0.15] [--trials 1]
        [--controls all|NAME,...] [--eval-pairs 256] [--viewers NAME,...] [--threads N] [--shard I/N]
        [--add-controls NAME,...]

For each task: `prune_task(..., clean=True, faithfulness=True)` (what `sparseformer prune RUN --task NAME
--faithfulness` runs) at the target loss, or, when the unpruned model's loss is above it, at 1.25 x that loss
(the row says so). `--tasks learned` takes every task with loss under 0.45 on --eval-pairs test pairs; `--tasks none` only
rebuilds the table from the rows present. Writes
DIR/circuits/NAME.json (the circuit documents; `sparseformer.report.viewer.write_viewer` rebuilds a viewer),
DIR/NAME.html for the tasks in --viewers, DIR/rows/NAME.json per task and DIR/circuit_report.md / .json
(assembled from every row present). A task whose row exists is skipped, so an interrupted report resumes, and
two processes given disjoint --tasks (or --shard 0/2 and 1/2: every second task) can share one DIR (each at
--threads 1 uses a core of its own). `--add-controls NAME,...` runs more controls on the tasks that have a row
and adds them to it (e.g. the norms control, a second full prune with cleaning, left out of a first pass to fit
a CPU budget).
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
            **control_entries(result.faithfulness["controls"]),
            "control_seconds": result.faithfulness["seconds"]}, result


def control_entries(controls: list[dict]) -> dict:
    """A row's view of faithfulness controls: each one's status and verdict, and its numbers."""
    return {"controls": {c["name"]: {"status": c["status"], "verdict": c["verdict"]} for c in controls},
            "numbers": {c["name"]: {k: v for k, v in c.items() if isinstance(v, (int, float))} for c in controls}}


def add_controls(run, out: Path, name: str, controls: list[str], command: str) -> None:
    """Run more faithfulness controls on a task's circuit already in the report and merge them into its row
    and its circuit document (a control already there is run again and replaced)."""
    from sparseformer.checkpoint import atomic_write_text
    from sparseformer.prune import read_circuit, run_faithfulness
    row_path, doc_path = out / "rows" / f"{name}.json", out / "circuits" / f"{name}.json"
    row, doc = json.loads(row_path.read_text()), read_circuit(doc_path)
    t0 = time.perf_counter()
    report = run_faithfulness(run, doc, controls=controls)
    for key, entries in control_entries(report["controls"]).items():
        row[key].update(entries)
    row["control_seconds"].update({c: report["seconds"][c] for c in controls})
    row["faithfulness_seconds"] = round(row["faithfulness_seconds"] + time.perf_counter() - t0, 1)
    row.setdefault("added_by", []).append(command)
    kept = [c for c in doc["faithfulness"]["controls"] if c["name"] not in controls]
    doc["faithfulness"]["controls"] = kept + report["controls"]
    atomic_write_text(doc_path, json.dumps(doc, indent=1) + "\n")
    atomic_write_text(row_path, json.dumps(row, indent=1) + "\n")
    print(json.dumps({"task": name, **{c: row["controls"][c]["status"] for c in controls}}), flush=True)


def _num(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(doc: dict) -> str:
    rows = doc["tasks"]
    names = list(dict.fromkeys(n for r in rows for n in r["controls"]))
    lines = [f"# Cleaned circuits and faithfulness: {doc['run']} (step {doc['step']})", "",
             "Commands: " + ", ".join(f"`{c}`" for c in doc["commands"])
             + f" (commit {doc['commit']}, {doc['date']}, {doc['machine']}).", "",
             f"Tasks learned (loss under {LEARNED} on {doc['eval_pairs']} test pairs): {len(doc['learned'])} of "
             f"{len(doc['eval'])}.", "",
             "Target 0.15 per sequence, or 1.25 x the unpruned loss where the model does not reach 0.15 (marked *).",
             "Nodes/edges before cleaning are the bisected circuit's; after cleaning every remaining node is necessary.",
             "Necessity: the loss with the circuit's nodes ablated (and its ratio to the circuit's loss).", "",
             "| task | target | full loss | before: nodes / edges / loss | cleaned: nodes / edges / loss | necessity "
             "| nonsense: edges / loss | cleaning s (evals) | prune s | controls s | " + " | ".join(names) + " |",
             "| --- " * (10 + len(names)) + "|"]
    for r in rows:
        ratio = r["necessity_loss"] / r["loss"] if r["necessity_loss"] is not None and r["loss"] else None
        ns = r.get("numbers", {}).get("nonsense", {})
        lines.append(
            f"| {r['task']} | {r['target']:g}{'*' if r['relaxed'] else ''} | {r['full_loss']:.4f} | "
            f"{r['nodes_before'] or '-'} / {r['edges_before'] or '-'} / {_num(r['loss_before'])} | "
            f"{r['nodes'] or '-'} / {r['edges'] or '-'} / {_num(r['loss'])} | {_num(r['necessity_loss'])} "
            f"({_num(ratio, '.1f')}x) | {ns.get('control_edges', '-')} / {_num(ns.get('control_loss'))} | "
            f"{_num(r['clean_seconds'], '.0f')} ({r['clean_evals'] or '-'}) | {r['prune_seconds']:.0f} | "
            f"{r['faithfulness_seconds']:.0f} | "
            + " | ".join(r["controls"].get(n, {}).get("status", "not run") for n in names) + " |")
    lines += ["", "Verdicts:", ""]
    for r in rows:
        lines.append(f"- **{r['task']}**")
        lines += [f"  - {n}: {c['status']}: {c['verdict']}" for n, c in r["controls"].items()]
    lines += ["", f"The model on the 20 tasks ({doc['eval_pairs']} test pairs each):", "",
              "| task | loss | accuracy | learned | circuit (nodes / edges) |", "| --- | --- | --- | --- | --- |"]
    by_task = {r["task"]: r for r in rows}
    for e in doc["eval"]:
        c = by_task.get(e["task"])
        lines.append(f"| {e['task']} | {e['loss']:.3f} | {e['accuracy']:.3f} | {'yes' if e['loss'] < LEARNED else 'no'} | "
                     + (f"{c['nodes'] or '-'} / {c['edges'] or '-'} |" if c else "- |"))
    losses = {r["task"]: r["loss"] for r in doc["eval"]}
    pending = [t for t in doc["learned"] if t not in {r["task"] for r in rows}]
    if pending:
        lines += ["", "Learned but not pruned in this report (no row yet): "
                  + ", ".join(f"{t} {losses[t]:.3f}" for t in pending)]
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
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--add-controls", default="",
                    help="NAME,...: run these controls on tasks that have a row already, and add them to it")
    ap.add_argument("--shard", default="0/1", help="I/N: only every N-th of the tasks, from the I-th")
    args = ap.parse_args()
    import sys

    import torch

    from sparseformer.checkpoint import atomic_write_text, load_run
    from sparseformer.prune import CONTROLS, write_outputs
    from sparseformer.tasks import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run)
    rows = evaluate(run.model, run.tokenizer, "all", n=args.eval_pairs)
    losses = {r["task"]: r["loss"] for r in rows}
    learned = [t for t, v in losses.items() if v < LEARNED]
    names = learned if args.tasks == "learned" else [] if args.tasks == "none" else args.tasks.split(",")
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    names = names[shard::n_shards]
    controls = CONTROLS if args.controls == "all" else args.controls.split(",")
    extra = args.add_controls.split(",") if args.add_controls else []
    viewers = set(filter(None, args.viewers.split(",")))
    row_dir = args.out / "rows"
    (args.out / "circuits").mkdir(parents=True, exist_ok=True)
    row_dir.mkdir(exist_ok=True)
    command = "python bench/circuit_report.py " + " ".join(sys.argv[1:])
    head = {"run": str(args.run), "step": run.step, "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
            "eval_pairs": args.eval_pairs, "eval": rows, "learned": learned}
    for name in names:
        if (row_dir / f"{name}.json").is_file():
            if extra:
                add_controls(run, args.out, name, extra, command)
            else:
                print(f"{name}: row exists, skipped", flush=True)
            continue
        if extra:
            continue
        row, result = one_task(run, name, args.target, args.trials, controls)
        row["command"] = command
        row["machine"] = head["machine"]
        write_outputs(run.path, result)
        json_path, html_path = write_outputs(args.out, result)
        if name in viewers:
            html_path.replace(args.out / f"{name}.html")
        else:
            html_path.unlink()
        atomic_write_text(row_dir / f"{name}.json", json.dumps(row, indent=1) + "\n")
        print(json.dumps({k: row[k] for k in ("task", "target", "nodes", "edges", "loss", "nodes_before",
                                              "edges_before")}), flush=True)
    order = {t: i for i, t in enumerate(losses)}
    done = sorted((json.loads(p.read_text()) for p in row_dir.glob("*.json")), key=lambda r: order.get(r["task"], 99))
    pruned = {r["task"] for r in done}
    doc = {**head, "commands": sorted({c for r in done for c in [r["command"], *r.get("added_by", [])]}), "tasks": done,
           "not_learned": sorted((t, v) for t, v in losses.items() if v >= LEARNED and t not in pruned)}
    if not names and args.tasks == "learned":
        print("no task learned: nothing to prune", flush=True)
    atomic_write_text(args.out / "circuit_report.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(args.out / "circuit_report.md", markdown(doc))

if __name__ == "__main__":
    main()
