"""Is a model trained with support-only dW as good as one trained with the paper's dense dW?

    python bench/support_dw_experiment.py --out bench/results/support_dw

The `tiny` preset (1,500 steps, 3M tokens of the standard library) trained with the paper's dense dW at
three seeds (the seed-to-seed spread of init and batch order; every arm has the same validation
documents and tokenizer), and with support dW (docs/support-dw.md) at seed 0, on the same
tokens, for every N in --dense-every x every budget in --candidates; then two arms that flip one optimizer
choice each (dw_moments=decay, dw_rms=all) at the largest N and the smallest budget. Every arm runs through
sparseformer.pipeline.run_pipeline: train, evaluate the 20 tasks, prune `single_double_quote` (target
0.15). All arms validate every 50 steps (train.eval_every=50, the same for every arm; validation does not
change training) for the loss curves. Runs live in --runs; a finished arm is reused, so the script can be
stopped and rerun. Writes results.json, results.md and val_loss.svg (plus a zoomed val_loss_end.svg).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TASK = "single_double_quote"


def arms(args) -> list[dict]:
    """name, seed and --set overrides of every arm, in the order they run."""
    out = [dict(name=f"dense-s{s}", seed=s, sets=[]) for s in args.seeds]
    for n in args.dense_every:
        for c in args.candidates:
            out.append(dict(name=f"support-N{n}-C{c:g}", seed=0, n=n, c=c,
                            sets=["sparsity.dw_mode=support", f"sparsity.dense_every={n}", f"sparsity.candidates={c}"]))
    n, c = max(args.dense_every), min(args.candidates)
    base = ["sparsity.dw_mode=support", f"sparsity.dense_every={n}", f"sparsity.candidates={c}"]
    out.append(dict(name=f"support-N{n}-C{c:g}-decay", seed=0, n=n, c=c, sets=base + ["sparsity.dw_moments=decay"]))
    out.append(dict(name=f"support-N{n}-C{c:g}-rms-all", seed=0, n=n, c=c, sets=base + ["sparsity.dw_rms=all"]))
    return out


def run_arm(arm: dict, runs: Path, eval_pairs: int, steps: int | None) -> dict:
    import torch
    from sparseformer.checkpoint import read_metrics, read_state
    from sparseformer.config import apply_overrides, get_preset
    from sparseformer.pipeline import run_pipeline

    # data.seed=0: every arm validates on the same documents with the same tokenizer; the seed moves the
    # init and the batch order only
    sets = ["train.device=cpu", f"train.seed={arm['seed']}", "data.seed=0", "train.eval_every=50"] + arm["sets"]
    cfg = apply_overrides(get_preset("tiny"), sets + ([f"train.steps={steps}"] if steps else []))
    cached = runs / arm["name"] / "support_dw_arm.json"
    if cached.is_file():                       # evaluated and pruned before: a rerun only rebuilds the report
        return json.loads(cached.read_text())
    # an interrupted arm resumes from its last checkpoint (bit-identical to an uninterrupted run); its
    # seconds then count the resumed part only, which the report says
    resumed = read_state(runs / arm["name"]).get("step") or None if (runs / arm["name"] / "config.json").is_file() else None
    t0 = time.perf_counter()
    s = run_pipeline(cfg, runs / arm["name"], task=TASK, eval_pairs=eval_pairs, progress=False, fallback=False)
    rows = read_metrics(runs / arm["name"])
    timed = [r["tokens_per_s"] for r in rows if "val_loss" not in r and r.get("tokens_per_s")]
    doc = dict(arm, threads=torch.get_num_threads(), final_val_loss=s["val_loss"], train_seconds=s["seconds"]["train"],
               seconds=time.perf_counter() - t0, tokens_per_s=statistics.median(timed) if timed else None,
               val_curve=[(r["step"], r["val_loss"]) for r in rows if "val_loss" in r],
               eval=s["eval"], mean_task_loss=sum(r["loss"] for r in s["eval"]) / len(s["eval"]),
               circuit=s["circuit"], resumed_at_step=resumed)
    if arm.get("n"):
        doc["dw"] = dw_summary(rows, cfg.train.steps)
    cached.write_text(json.dumps(doc, indent=1))
    return doc


def dw_summary(rows: list[dict], steps: int) -> dict:
    """Refresh statistics over the whole run and over its second half (after the density anneal)."""
    out = {}
    for part, keep in (("all", lambda r: True), ("second_half", lambda r: r["step"] > steps // 2)):
        sel = [r for r in rows if keep(r)]
        total = {k: sum(r.get(k, 0) for r in sel) for k in (
            "dw_refresh_steps", "dw_support_steps", "dw_layer_refreshes", "dw_layer_refreshes_entered",
            "dw_entered_at_refresh", "dw_entered_between")}
        lr = total["dw_layer_refreshes"]
        total["frac_refreshes_entered"] = total["dw_layer_refreshes_entered"] / lr if lr else None
        for kind in ("used", "all", "tracked"):       # step-weighted mean scale of each step type
            for st, count_key in (("refresh", "dw_refresh_steps"), ("support", "dw_support_steps")):
                key = f"dw_scale_{kind}_{st}"
                w = [(r[key], r[count_key]) for r in sel if key in r and r.get(count_key)]
                n = sum(c for _, c in w)
                total[f"scale_{kind}_{st}"] = sum(v * c for v, c in w) / n if n else None
        for over in ("all", "weights"):               # refresh-step-weighted mean off-support share
            key = f"dw_offsupport_share_{over}"
            w = [(r[key], r["dw_refresh_steps"]) for r in sel if key in r and r.get("dw_refresh_steps")]
            n = sum(c for _, c in w)
            total[f"offsupport_share_{over}"] = sum(v * c for v, c in w) / n if n else None
        for kind in ("used", "all", "tracked"):
            a, b = total[f"scale_{kind}_support"], total[f"scale_{kind}_refresh"]
            total[f"jump_{kind}"] = a / b if a and b else None    # support-step scale over refresh-step scale
        out[part] = total
    return out


def verdicts(models: list[dict]) -> dict:
    dense = [m for m in models if m["name"].startswith("dense")]
    vals = [m["final_val_loss"] for m in dense]
    ref = next(m for m in dense if m["seed"] == 0)["final_val_loss"]
    out = dict(dense_min=min(vals), dense_max=max(vals), dense_mean=statistics.mean(vals),
               dense_spread=max(vals) - min(vals), ref_seed0=ref, arms={})
    for m in models:
        if m["name"].startswith("dense"):
            continue
        v = m["final_val_loss"]
        out["arms"][m["name"]] = dict(vs_seed0=v - ref, rel_vs_seed0=v / ref - 1, within_spread=v <= max(vals),
                                      within_1pct=v <= 1.01 * ref)
    ok = [m for m in models if m.get("n") and not m["name"].endswith(("-decay", "-rms-all"))
          and out["arms"][m["name"]]["within_spread"] and out["arms"][m["name"]]["within_1pct"]]
    # (a grid arm failing parity does not hide a larger N that passes: each budget reports its largest N)
    out["largest_n_at_parity"] = {f"C{c:g}": max((m["n"] for m in ok if m["c"] == c), default=None)
                                  for c in sorted({m["c"] for m in models if m.get("c")})}
    return out


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def markdown(doc: dict) -> str:
    models, v = doc["models"], doc["verdicts"]
    dense_vals = ", ".join(f"{m['final_val_loss']:.4f}" for m in models if m["name"].startswith("dense"))
    lines = [f"# Support-only dW vs the paper's dense dW, tiny preset (commit {doc['commit']}, {doc['date']})", "",
             f"Machine: {doc['machine']}. Command: `{doc['command']}`. "
             f"{sum(m['seconds'] for m in models) / 60:.0f} minutes in all (train, evaluate, prune).", "",
             f"Dense-dW seeds {dense_vals}: spread {v['dense_spread']:.4f} (max {v['dense_max']:.4f}); "
             f"seed 0 = {v['ref_seed0']:.4f}. "
             "Parity: final validation loss at most the worst dense seed's AND within 1% of dense seed 0 "
             "(same seed, same tokens).", "",
             "Largest N at parity, among the N that ran for each budget: "
             + ", ".join(f"{c}: {n}" for c, n in v["largest_n_at_parity"].items()), "",
             "Not run (left out with --only): " + (", ".join(doc["not_run"]) or "none") + ".", "",
             "| arm | final val loss | vs dense s0 | parity | mean task loss | quote loss (acc) | quote circuit "
             "nodes / edges | tokens/s (CPU) | refreshes with entries | entered at refreshes / between |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        q = next((r for r in m["eval"] if r["task"] == TASK), None)
        c = m["circuit"]
        circ = f"{c['nodes']} / {c['edges']:,}" if "edges" in c else f"({c.get('error', 'none')[:40]})"
        a = v["arms"].get(m["name"])
        par = "-" if a is None else ("yes" if a["within_spread"] and a["within_1pct"] else "no")
        rel = "-" if a is None else f"{100 * a['rel_vs_seed0']:+.2f}%"
        threads = f"{m['threads']} thr" if m.get("threads") else "2 thr"       # arms run before --threads: the default
        dw = m.get("dw", {}).get("all")
        frac = "-" if not dw else f"{_fmt(dw['frac_refreshes_entered'], '.2f')} of {dw['dw_layer_refreshes']}"
        ent = "-" if not dw else f"{dw['dw_entered_at_refresh']:,} / {dw['dw_entered_between']:,}"
        name = m["name"] + (f" (resumed at step {m['resumed_at_step']})" if m.get("resumed_at_step") else "")
        lines.append(f"| {name} | {m['final_val_loss']:.4f} | {rel} | {par} | {m['mean_task_loss']:.4f} | "
                     f"{q['loss']:.4f} ({q['accuracy']:.3f}) | {circ} | {_fmt(m['tokens_per_s'], '.0f')} ({threads}) | "
                     f"{frac} | "
                     f"{ent} |" if q else f"| {name} | {m['final_val_loss']:.4f} | | | | | | | | |")
    lines += ["", "An arm marked resumed was stopped and resumed from its last checkpoint (resume is exact); the "
              "minutes above count its resumed part only.", "",
              "Tokens/s: the median over the run's logged windows, at the given torch thread count, on a 2-core "
              "machine that other jobs shared at times (slow phases of 5-10x were seen): indicative only; "
              "bench/results/support_dw_step_cpu.md has the step times measured side by side.", "",
              "Refreshes with entries: the fraction of (layer, refresh step) pairs in which at least one weight "
              "entered that layer's support (every sparse linear layer, 9 in the tiny model, at every refresh "
              "step). Entered: weights that joined a support at refresh steps / at the steps between (from the "
              "tracked set).", "",
              "The gradient RMS at refreshes, second half of training (after the density anneal): the part of the "
              "dense dW outside the tracked entries (support + candidates) as a share of the squared gradient "
              "norm, of all gradients (what moves the `dw_rms=all` scale: it drops by sqrt(1 - share) on a "
              "refresh step) and of the sparse weights' gradients alone; and the mean scale on support steps over "
              "the mean on refresh steps, computed both ways (each arm used its own `dw_rms`):",
              "", "| arm | untracked share, all | ... of the weights | scale ratio, all | scale ratio, tracked | "
              "refreshes with entries |", "|---|---|---|---|---|---|"]
    for m in models:
        dw = m.get("dw", {}).get("second_half")
        if dw:
            lines.append(f"| {m['name']} | {_fmt(dw['offsupport_share_all'], '.4f')} | "
                         f"{_fmt(dw['offsupport_share_weights'], '.3f')} | {_fmt(dw['jump_all'], '.3f')} | "
                         f"{_fmt(dw['jump_tracked'], '.3f')} | {_fmt(dw['frac_refreshes_entered'], '.2f')} of "
                         f"{dw['dw_layer_refreshes']} |")
    tasks = [r["task"] for r in models[0]["eval"]]
    lines += ["", "Task loss (mean per-sequence contrast loss, nats) per arm:", "",
              "| task | " + " | ".join(m["name"] for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(
            f"{next(r['loss'] for r in m['eval'] if r['task'] == t):.3f}" for m in models) + " |")
    return "\n".join(lines) + "\n"


def plots(doc: dict, out: Path) -> None:
    from sparseformer.sweep.svg import PALETTE, Axes
    for name, start in (("val_loss.svg", 0), ("val_loss_end.svg", 750)):
        ax = Axes(title="Validation loss, tiny preset: dense dW (3 seeds) vs support dW (seed 0)",
                  subtitle="from step " + str(start) if start else "", xlabel="step", ylabel="validation loss")
        for i, m in enumerate(doc["models"]):
            pts = [(s, v) for s, v in m["val_curve"] if s >= max(start, 50)]
            ax.line([p[0] for p in pts], [p[1] for p in pts], color=PALETTE[i % len(PALETTE)], label=m["name"],
                    dash=m["name"].startswith("dense"), marker="square" if m["name"].startswith("dense") else "circle")
        (out / name).write_text(ax.render())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/support_dw"))
    ap.add_argument("--runs", type=Path, default=Path("runs/support_dw"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dense-every", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--candidates", type=float, nargs="+", default=[0.5, 2.0])
    ap.add_argument("--eval-pairs", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="train.steps of every arm (default: the preset's)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these arms of the grid; the report covers them and names the arms left out "
                         "(it needs dense-s0)")
    ap.add_argument("--commit", default=None, help="the code's commit, when run from a copy outside git")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (results do not depend on it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("SPARSEFORMER_CACHE", str(args.runs / "cache"))
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = arms(args)
    unknown = sorted(set(args.only or ()) - {a["name"] for a in grid})
    if unknown:
        ap.error(f"--only names arms outside the grid: {', '.join(unknown)}")
    models, skipped = [], []
    for arm in grid:
        if args.only is not None and arm["name"] not in args.only:
            skipped.append(arm["name"])
            continue
        print(f"[support_dw] {arm['name']} ...", file=sys.stderr, flush=True)
        models.append(run_arm(arm, args.runs, args.eval_pairs, args.steps))
        print(f"[support_dw] {arm['name']}: val {models[-1]['final_val_loss']:.4f}, "
              f"{models[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
        (args.out / "results.partial.json").write_text(json.dumps(models, indent=1))
    if not any(m["name"] == "dense-s0" for m in models):
        print("[support_dw] no report: it compares every arm with dense-s0, which did not run", file=sys.stderr)
        return 0
    doc = dict(commit=args.commit or _git("rev-parse", "--short", "HEAD"), date=time.strftime("%Y-%m-%d"),
               machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}",
               command="python bench/support_dw_experiment.py "
               + " ".join(argv or sys.argv[1:]),
               models=models, not_run=skipped, verdicts=verdicts(models))
    (args.out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(doc))
    plots(doc, args.out)
    (args.out / "results.partial.json").unlink(missing_ok=True)
    print(markdown(doc))
    return 0


def _git(*cmd) -> str:
    try:
        return subprocess.check_output(["git", *cmd], text=True).strip()
    except Exception:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
