"""The probes behind the `small` preset: which model, trained for a fixed wall-clock budget on this CPU,
learns the most of the 20 tasks.

    python bench/small_preset_probe.py --minutes 15 [--only NAME ...] [--runs runs/small_probe]
        [--out bench/results/small_preset_probe]
    python bench/small_preset_probe.py --timing [--only NAME ...]     # steps/s of each candidate, no training

Each candidate is the `tiny` preset with overrides. Its step count is set so that training fits the budget on
this machine (a short timing probe, as `sparseformer sweep` does for minutes budgets), so the L0 anneal and the
lr decay run their full course within it. After training, every task is evaluated on --eval-pairs test pairs
(prompts cut to the model's context); a task counts as learned when its loss is under 0.45 per sequence. Writes NAME.json per
candidate and README.md (the table over all candidates) to --out. Finished runs are reused. `--timing` only runs
the timing probe of each candidate (seconds each) and writes timing.json: how many tokens each would see in an
hour on this machine, which is how the `small` preset was chosen among candidates too slow to probe for an hour each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

LEARNED = 0.45

CANDIDATES = {
    # the tiny architecture with a 256-token context, trained longer
    "L2-d128": [],
    # deeper
    "L4-d128": ["model.n_layer=4"],
    # deeper and wider
    "L4-d192": ["model.n_layer=4", "model.d_model=192", "model.n_head=12", "model.d_mlp=768"],
    # wider
    "L2-d256": ["model.d_model=256", "model.n_head=16", "model.d_mlp=1024"],
}
CONTEXT = ["model.block_size=256", "train.seq_len=256", "train.batch_size=8"]


def probe(name: str, overrides: list[str], minutes: float, runs: Path, eval_pairs: int) -> dict:
    from sparseformer.checkpoint import load_run, read_state
    from sparseformer.config import apply_overrides, get_preset
    from sparseformer.pipeline import train_or_reuse
    from sparseformer.sweep.budget import probe_steps_per_s, steps_for_minutes
    from sparseformer.tasks import evaluate

    run_dir = runs / name
    cfg = apply_overrides(get_preset("tiny"), ["train.device=cpu"] + CONTEXT + overrides)
    if (run_dir / "config.json").is_file():
        steps = json.loads((run_dir / "config.json").read_text())["train"]["steps"]
        rate = None
    else:
        rate = probe_steps_per_s(cfg, runs / f".probe-{name}")
        steps = steps_for_minutes(cfg, minutes, rate)
    cfg = apply_overrides(cfg, [f"train.steps={steps}", f"train.eval_every={max(1, steps // 6)}",
                                f"train.ckpt_every={max(1, steps // 6)}"])
    state = read_state(run_dir) if run_dir.is_dir() else {}
    finished_before, resumed_from = state.get("finished", False), state.get("step")
    train_s = train_or_reuse(cfg, run_dir, progress=False)
    run = load_run(run_dir)
    t0 = time.perf_counter()
    rows = evaluate(run.model, run.tokenizer, "all", n=eval_pairs)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    # the training speed without validation rows; its median is robust to the bursts of other jobs on the
    # machine (the lock keeps long jobs apart, not the team's short ones)
    speeds = sorted(m["tokens_per_s"] for m in metrics if m.get("tokens_per_s") and "val_loss" not in m)
    median_speed = speeds[len(speeds) // 2] if speeds else None
    return {"name": name, "overrides": CONTEXT + overrides, "minutes_budget": minutes, "eval_pairs": eval_pairs,
            "steps_per_s_probe": rate, "steps": steps,
            "tokens": steps * cfg.train.batch_size * cfg.train.seq_len,
            "train_seconds": None if finished_before or resumed_from else round(train_s, 1),
            "resumed_from_step": resumed_from if resumed_from and not finished_before else None,
            "median_tokens_per_s": median_speed,
            "minutes_at_median_speed": round(steps * cfg.train.batch_size * cfg.train.seq_len / median_speed / 60, 1)
            if median_speed else None,
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "params": sum(p.numel() for p in run.model.parameters()), "val_loss": val[-1] if val else None,
            "tasks": {r["task"]: round(r["loss"], 4) for r in rows},
            "learned": sorted(r["task"] for r in rows if r["loss"] < LEARNED)}


def timing(names: list[str], runs: Path) -> dict:
    """Steps/s of each candidate from the sweep's timing probe (sparse from the first step), and the tokens
    an hour at that speed buys (with the budget's safety margin)."""
    import torch

    from sparseformer.config import apply_overrides, get_preset
    from sparseformer.sweep.budget import SAFETY, probe_steps_per_s
    rows = {}
    for name in names:
        cfg = apply_overrides(get_preset("tiny"), ["train.device=cpu"] + CONTEXT + CANDIDATES[name])
        rate = probe_steps_per_s(cfg, runs / f".timing-{name}")
        tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
        rows[name] = {"overrides": CANDIDATES[name], "steps_per_s": round(rate, 3),
                      "tokens_per_s": round(rate * tokens_per_step),
                      "tokens_per_hour": int(SAFETY * 3600 * rate * tokens_per_step)}
        print(name, json.dumps(rows[name]), flush=True)
    return {"threads": torch.get_num_threads(), "context": CONTEXT, "candidates": rows}


def _label(overrides: list[str]) -> str:
    """A candidate's overrides beyond the shared context, for the tables."""
    return " ".join(o for o in overrides if o not in CONTEXT) or "(tiny architecture)"


def readme(docs: list[dict], timings: dict | None = None) -> str:
    lines = ["# Probes for the `small` preset", "",
             "`python bench/small_preset_probe.py --minutes M` on the 2-core CPU (under the team's CPU lock, other jobs",
             "may have run alongside). Each candidate is the tiny preset with a 256-token context (batch 8 x 256)",
             "and the overrides shown, its steps set to fit the budget; tasks are evaluated on the test pairs",
             "given in the table,",
             f"learned = loss under {LEARNED} per sequence.", "",
             "`train s` is the wall-clock of one uninterrupted training (blank when the run was resumed);",
             "`min at median speed` is the tokens over the median logged training speed, robust to the other jobs",
             "that ran alongside.", "",
             "| candidate | overrides | budget (min) | steps | tokens | train s | min at median speed | params | val loss "
             "| eval pairs | tasks learned |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in docs:
        lines.append(f"| {d['name']} | `{_label(d['overrides'])}` | {d['minutes_budget']:g} | {d['steps']} | {d['tokens']:,} | "
                     f"{d['train_seconds'] or ''} | {d.get('minutes_at_median_speed') or ''} | {d['params']:,} | {d['val_loss']:.4f} | {d['eval_pairs']} | {len(d['learned'])} |")
    if timings:
        lines += ["", f"Timing probe (`--timing`, {timings['threads']} threads, sparse from the first step):", "",
                  "| candidate | overrides | steps/s | tokens/s | tokens in an hour |", "| --- | --- | --- | --- | --- |"]
        for name, t in timings["candidates"].items():
            lines.append(f"| {name} | `{_label(t['overrides'])}` | {t['steps_per_s']} | "
                         f"{t['tokens_per_s']:,} | {t['tokens_per_hour']:,} |")
    tasks = list(docs[0]["tasks"]) if docs else []
    lines += ["", "Task loss per candidate:", "", "| task | " + " | ".join(d["name"] for d in docs) + " |",
              "| --- |" + " --- |" * len(docs)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f"{d['tasks'][t]:.3f}" for d in docs) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--runs", type=Path, default=Path("runs/small_probe"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/small_preset_probe"))
    ap.add_argument("--timing", action="store_true", help="only time each candidate (no training)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild README.md from the files in --out")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sparseformer.checkpoint import atomic_write_text
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    timing_path = args.out / "timing.json"
    if args.timing:
        atomic_write_text(timing_path, json.dumps(timing(args.only or list(CANDIDATES), args.runs), indent=1) + "\n")
    trains = not (args.timing or args.report_only)
    for name in (args.only or CANDIDATES) if trains else []:
        doc = probe(name, CANDIDATES[name], args.minutes, args.runs, args.eval_pairs)
        atomic_write_text(args.out / f"{name}.json", json.dumps(doc, indent=1) + "\n")
        print(json.dumps({k: doc[k] for k in ("name", "steps", "train_seconds", "val_loss", "learned")}), flush=True)
    docs = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json")) if p != timing_path]
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    notes = args.out / "notes.md"                  # hand-written run notes, kept below the generated tables
    extra = "\n" + notes.read_text() if notes.is_file() else ""
    atomic_write_text(args.out / "README.md", readme(docs, timings) + extra)


if __name__ == "__main__":
    main()
