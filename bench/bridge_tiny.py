"""Bridges on the tiny preset: a sparse model trained coupled to the tiny dense twin, its quote circuit, and the
steering curve of that circuit's most important node, all through the command line.

    sparseformer train --preset tiny --dense --out runs/tiny-dense-seed0        # the dense twin (~6 min)
    python bench/bridge_tiny.py --dense runs/tiny-dense-seed0 --runs runs \
        --out bench/results/bridges_tiny --kl-sites-per-step 1 --steps 700 --target-loss 0.25

Runs, in order:
  sparseformer bridge --dense DENSE --out RUNS/tiny-bridged --preset tiny ...   (--resume when it has a checkpoint)
  sparseformer eval RUN --tasks single_double_quote --json                      (the bridged and the dense model)
  sparseformer prune RUNS/tiny-bridged --task single_double_quote --target-loss T --json
  sparseformer steer RUNS/tiny-bridged --task single_double_quote --node top --json
and writes OUT/bridges_tiny.md and .json with the commands, their wall times, the per-site bridge metrics,
the circuit and the steering curve, plus copies of the circuit (JSON, viewer) and the curve (JSON, SVG). It
also times one training step of the tiny preset (forward, backward, SparseAdamW) in this process, interleaved:
plain next-token loss, bridge loss with the KL terms of every site, and of one site. A bridge run that is
resumed (a finished one returns at once) keeps the earlier invocations' commands and wall times in the report.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

TASK = "single_double_quote"


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def run(cmd: list[str], log: list[dict]) -> dict | None:
    """Run one CLI command (its --json output parsed), logging the command line, wall time and exit code."""
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    entry = {"command": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1), "exit_code": proc.returncode}
    if proc.returncode != 0:
        entry["error"] = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    log.append(entry)
    print(f"  {entry['seconds']} s, exit {proc.returncode}", flush=True)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def time_steps(dense_run: Path, reps: int = 3) -> dict:
    """Median seconds of one tiny-preset training step: plain, bridged (all KL sites), bridged (one KL site)."""
    import statistics

    import torch.nn.functional as F

    from sparseformer.bridges import Bridges, bridge_sites, bridge_terms
    from sparseformer.bridges.objective import freeze
    from sparseformer.checkpoint import load_run
    from sparseformer.config import get_preset
    from sparseformer.data.for_config import load_dataset
    from sparseformer.model import GPT
    from sparseformer.sparsity.optimizer import SparseAdamW
    from sparseformer.sparsity.params import configure, param_groups, write_ks

    dense = load_run(dense_run)
    cfg = get_preset("tiny")
    tc = cfg.train
    torch.manual_seed(0)
    model = GPT(cfg.model)
    configure(model, cfg.sparsity)
    write_ks(model, tc.steps // 2, tc.steps, cfg.sparsity)
    bridges = Bridges(bridge_sites(cfg.model.n_layer), dense.config.model.d_model, cfg.model.d_model, 32)
    opt = SparseAdamW(param_groups(model, weight_decay=0.1) + param_groups(bridges, weight_decay=0.1), lr=1e-3)
    data = load_dataset(dense.config, dense.tokenizer)
    freeze(dense.model)

    def loss(kind, x, y):
        if kind == "plain":
            return F.cross_entropy(model(x).float().view(-1, cfg.model.vocab_size), y.view(-1))
        sites = None if kind == "bridge, all sites" else [bridges.sites[0]]
        return bridge_terms(model, dense.model, bridges, x, y, kl_sites=sites).total(1.0, 1.0)

    times: dict[str, list[float]] = {"plain": [], "bridge, all sites": [], "bridge, one site": []}
    for rep in range(reps + 1):                                  # the first round warms up
        x, y = data.get_batch("train", tc.batch_size, tc.seq_len, rep, 0)
        for kind in times:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss(kind, x, y).backward()
            opt.step()
            if rep:
                times[kind].append(time.perf_counter() - t0)
    return {kind: round(statistics.median(ts), 3) for kind, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", type=Path, required=True, help="the tiny dense twin's run directory")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where the bridged run goes")
    ap.add_argument("--out", type=Path, default=Path("bench/results/bridges_tiny"))
    ap.add_argument("--steps", type=int, default=None, help="bridge training steps (default: the preset's)")
    ap.add_argument("--kl-sites-per-step", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=64, help="task pairs for the steering curve")
    ap.add_argument("--target-loss", type=float, default=0.15, help="prune's target task loss per sequence")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT/bridges_tiny.md from its JSON")
    args = ap.parse_args()
    if args.render:
        doc = json.loads((args.out / "bridges_tiny.json").read_text())
        (args.out / "bridges_tiny.md").write_text(render(doc))
        return

    sf = [sys.executable, "-m", "sparseformer"]
    run_dir = args.runs / "tiny-bridged"
    log: list[dict] = []
    cmd = sf + ["bridge", "--dense", str(args.dense), "--out", str(run_dir), "--preset", "tiny", "--device", "cpu",
                "--kl-sites-per-step", str(args.kl_sites_per_step), "--json"]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    state, report = run_dir / "checkpoint.json", args.out / "bridges_tiny.json"
    earlier = {"invocations": [], "log": []}
    if state.is_file():
        cmd.append("--resume")
        if report.is_file():         # the report keeps the commands (the training) of the earlier invocations
            earlier = json.loads(report.read_text())
    bridged = run(cmd, log)
    if bridged is None:
        raise SystemExit(f"bridge failed: {log[-1]}")
    evals = {name: run(sf + ["eval", str(path), "--tasks", TASK, "--json"], log)
             for name, path in (("bridged sparse", run_dir), ("dense twin", args.dense))}
    circuit = run(sf + ["prune", str(run_dir), "--task", TASK, "--target-loss", str(args.target_loss), "--json"],
                  log)
    steer = run(sf + ["steer", str(run_dir), "--task", TASK, "--node", "top", "--pairs", str(args.pairs), "--json"],
                log)

    step_seconds = time_steps(args.dense)
    args.out.mkdir(parents=True, exist_ok=True)
    if circuit is not None:              # the viewer as `steer` left it: with the node's steering curve
        for key in ("circuit", "viewer"):
            shutil.copy(circuit[key], args.out / Path(circuit[key]).name)
    if steer is not None:
        for f in steer["files"][:2]:     # the curve's JSON and SVG
            shutil.copy(f, args.out / Path(f).name)
    doc = {"commit": _git_commit(), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "invocations": earlier["invocations"] + [" ".join(["python"] + sys.argv)], "log": earlier["log"] + log, "step_seconds": step_seconds, "bridge": bridged,
           "eval": evals, "circuit": circuit, "steering": steer}
    (args.out / "bridges_tiny.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "bridges_tiny.md").write_text(render(doc))
    print(f"wrote {args.out / 'bridges_tiny.md'}")


def _f(x, spec=".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _failure(doc: dict, verb: str) -> str:
    """The line saying that the `sparseformer VERB` command of the log failed, with its last output line."""
    failed = next(e for e in doc["log"] if f" {verb} " in e["command"])
    return f"`{verb}` failed: " + " ".join(failed["error"])


def render(doc: dict) -> str:
    from sparseformer.bridges import metrics_table
    b = doc["bridge"]
    lines = ["# Bridges on the tiny preset (CPU)", "",
             "Made by " + ", then ".join(f"`{c}`" for c in doc["invocations"]) + f" (the last at commit "
             f"{doc['commit']} on {doc['date']}; {doc['machine']}).", "",
             "## Commands", "", "| command | wall time (s) | exit |", "| --- | --- | --- |"]
    lines += [f"| `{e['command'].split(' -m ', 1)[-1]}` | {e['seconds']} | {e['exit_code']} |" for e in doc["log"]]
    t = doc["step_seconds"]
    lines += ["", "One training step of the tiny preset (16 x 128 tokens; forward, backward, SparseAdamW; median of 3, "
              "interleaved, in the bench process): " + ", ".join(f"{k} {v:.3f} s ({v / t['plain']:.1f}x)"
                                                              for k, v in t.items()) + "."]
    lines += ["", "## Bridge metrics (validation batches, end of training)", "", metrics_table(b["metrics"]), ""]
    lines += [f"## `{TASK}`", "", "| model | task loss | accuracy |", "| --- | --- | --- |"]
    for name, out in doc["eval"].items():
        row = out["results"][0] if out else {}
        lines.append(f"| {name} | {_f(row.get('loss'))} | {_f(row.get('accuracy'), '.3f')} |")
    c = doc["circuit"]
    lines.append("")
    if c is None:
        lines.append(_failure(doc, "prune"))
    else:
        lines += [f"Circuit of the bridged sparse model at target {c['target_loss']}: **{c['nodes']} nodes, "
                  f"{c['edges']} edges** (+{c['bias_edges']} bias), loss {_f(c['loss'])} (full model "
                  f"{_f(c['full_loss'])}); necessity {_f(c['necessity_loss'])}, random circuit "
                  f"{_f(c['random_loss'])}. Files: `{Path(c['circuit']).name}`, `{Path(c['viewer']).name}`."]
    s = doc["steering"]
    lines.append("")
    if s is None:
        lines.append(_failure(doc, "steer"))
    else:
        lines += [f"## Steering the dense model with `{s['node']}`", "",
                  f"The circuit's steerable node whose ablation raises the task loss most. Presented prompts: "
                  f"{s['presented']} ({s['presented_target']}), counterfactual target {s['target']}; {s['n_pairs']} "
                  f"pairs ({s['n_dropped']} dropped: prompts of unequal length). RMS of the residual at "
                  f"{s['bridge_site']}: sparse {s['rms_sparse']:.4g}, dense {s['rms_dense']:.4g}; mean delta at the "
                  f"last token {s['delta_last_mean']:.4g}. The dense model shown the counterfactual prompt gives "
                  f"P = {s['dense_counterfactual']['p_target']:.4g}.", "",
                  "| strength | dense, steered | dense, control directions | sparse, node patched | "
                  "dense steered, 2-way P |", "| --- | --- | --- | --- | --- |"]
        for i, x in enumerate(s["strengths"]):
            lines.append(f"| {x:g} | {s['dense']['p_target'][i]:.4g} | {_f(s['control']['p_target'][i], '.4g')} | "
                         f"{s['sparse']['p_target'][i]:.4g} | {s['dense']['p_binary'][i]:.4g} |")
        lines += ["", f"Plot: `{s['node']}.svg`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
