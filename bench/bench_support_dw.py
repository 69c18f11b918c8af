"""Training-step time with support-only dW (docs/support-dw.md) at each refresh interval N, measured and
on paper (the roofline).

Measured: the engines of bench_train_step.py (same model, init and batches, steps interleaved): `paper`
(masked dense matmuls, torch Adam, torch.topk), `ours` (dense dW) and `ours-support` at each candidate
budget, whose steps are timed by type: a refresh step (dense dW, candidates picked) and a support step (dW
only on the support and tracked entries, by the SDDMM method launch.sdd_method picks). A run of N steps
has one refresh, so its mean step is t(N) = t_support + (t_refresh - t_support) / N; the table gives the
speedup over `paper` for N in --report-n (N = 1 is a refresh every step).

On paper: the matmuls of the d_model 2048 paper model (8 layers, 64 x 256 tokens, weights at 1/1024,
embeddings and biases at 8/1024) at the roofline of docs/sparse-matmul.md with the H200 ceilings measured
in --ceilings-from (a committed bench_spmm run): each product at max(flops / P, bytes / BW); the paper way
runs all three products dense; ours runs forward and dX at the sparse ideal and dW as a dense GEMM on one
step in N and an SDDMM over (1 + C) k entries on the others. Matmuls only; the estimate for the whole step
keeps the rest of a measured paper-way step (--step-from) as it is.

  python bench/bench_support_dw.py --out bench/results --name support_dw_step_cpu      # tiny preset on CPU
  python bench/bench_support_dw.py --device cuda --out $OUT                            # d_model 2048 on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_spmm import _frac, t_ideal_ms, write_results  # noqa: E402
from bench_train_step import build, initial_model, markov_batches, step_fn  # noqa: E402
from common import device_line, env_header, parse_run_args, sync  # noqa: E402

from sparseformer.config import SparsityConfig, TrainConfig, get_preset, paper  # noqa: E402
from sparseformer.layers.support_dw import begin_step  # noqa: E402

log = logging.getLogger("bench_support_dw")
CYCLE = 4           # the measured support engines refresh every CYCLE steps (t(N) follows from the two times)


def roofline(ceil: dict, candidates: list[float], report_n: list[int], density=1 / 1024, embed_ratio=8.0,
             tokens=64 * 256, act_bytes=2) -> list[dict]:
    """Matmul time of one training step of the paper model at width 8 (module docstring), per N and C."""
    cfg = paper(width=8.0).model
    d, m, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
    layers = [(d, 3 * cfg.d_attn, density), (cfg.d_attn, d, density), (d, m, density), (m, d, density)]
    shapes = layers * cfg.n_layer + [(d, v, density * embed_ratio)]          # (K, N, density); lm_head last

    def t(K, N, dens, op):
        return t_ideal_ms(tokens, K, N, dens, act_bytes, ceil, op)

    paper_ms = sum(3 * t(K, N, 1.0, "dW(dense)") for K, N, _ in shapes)       # masked dense: three dense GEMMs
    rows = []
    for c in candidates:
        fwd_dx = sum(2 * t(K, N, dd, "fwd") for K, N, dd in shapes)
        dense_dw = sum(t(K, N, dd, "dW(dense)") for K, N, dd in shapes)
        sdd_dw = sum(t(K, N, min(1.0, dd * (1 + c)), "fwd") for K, N, dd in shapes)   # same I/O floor as fwd
        for n in report_n:
            ours = fwd_dx + dense_dw / n + sdd_dw * (n - 1) / n
            rows.append(dict(candidates=c, n=n, paper_ms=paper_ms, ours_ms=ours, speedup=paper_ms / ours))
    return rows


def measure(cfg, density, args, device) -> dict:
    """Median step ms of paper, ours, and each support engine's refresh and support steps."""
    cfg = copy.deepcopy(cfg)
    cfg.sparsity = SparsityConfig(weight_density=density, embed_density=min(1.0, density * args.embed_ratio_used),
                                  protect_per_neuron=0)
    init = initial_model(cfg, args.seed, device)
    def opts(c=0.0):
        return argparse.Namespace(**{**vars(args), "dense_every": CYCLE, "candidates": c})

    engines = {"paper": build(cfg, density, "paper", init, device, opts()),
               "ours": build(cfg, density, "ours", init, device, opts())}
    for c in args.candidates:
        engines[f"ours-support C={c:g}"] = build(cfg, density, "ours-support", init, device, opts(c))
    del init
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    times: dict[str, list[float]] = {}
    for i, (x, y) in enumerate(markov_batches(cfg.model.vocab_size, args.batch_size, args.seq_len, args.steps,
                                              args.seed)):
        x, y = x.to(device), y.to(device)
        for name, (model, opt) in engines.items():
            key = name
            if name.startswith("ours-support"):
                key += " refresh" if begin_step(model, i) else " support"
            sync(device)
            t0 = time.perf_counter()
            step_fn(model, opt, x, y, autocast)
            sync(device)
            if i >= args.warmup:
                times.setdefault(key, []).append((time.perf_counter() - t0) * 1e3)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["n_timed"] = {k: len(v) for k, v in times.items()}
    del engines
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def to_markdown(env, args, measured, roof, argv) -> str:
    lines = [f"# Support-only dW: training-step time per refresh interval N ({env['device']})", "",
             device_line(env), f"- command: `{' '.join(argv)}`",
             f"- measured: {args.preset_label}, batch {args.batch_size} x {args.seq_len}, {args.steps} steps per "
             f"engine ({args.warmup} untimed), support engines refresh every {CYCLE} steps; t(N) = t_support + "
             f"(t_refresh - t_support) / N", ""]
    for row in measured:
        d = row["density"]
        lines += [f"## density {_frac(d)}: median step ms", "",
                  "| engine | ms | steps timed |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {row['n_timed'][k]} |" for k, v in row.items() if k not in ("density", "n_timed")]
        lines += ["", "| C | " + " | ".join(f"N={n}" for n in args.report_n) + " | ours (dense dW) |",
                  "|---" * (len(args.report_n) + 2) + "|"]
        for c in args.candidates:
            r, s = row[f"ours-support C={c:g} refresh"], row[f"ours-support C={c:g} support"]
            lines.append(f"| {c:g} | " + " | ".join(f"{row['paper'] / (s + (r - s) / n):.2f}x"
                                                   for n in args.report_n) + f" | {row['paper'] / row['ours']:.2f}x |")
        lines.append("")
    lines += ["## On paper: matmul roofline of one step, d_model 2048, 8 layers, 64 x 256 tokens, 1/1024", "",
              f"Ceilings from `{args.ceilings_from}`: {args.ceil['flops'] / 1e12:.0f} TFLOP/s, "
              f"{args.ceil['bandwidth'] / 1e12:.2f} TB/s. Paper way (three dense GEMMs per linear): "
              f"{roof[0]['paper_ms']:.2f} ms.", "",
              "| C | " + " | ".join(f"N={n}" for n in args.report_n) + " |", "|---" * (len(args.report_n) + 1) + "|"]
    for c in args.candidates:
        cells = [r for r in roof if r["candidates"] == c]
        lines.append(f"| {c:g} | " + " | ".join(f"{r['ours_ms']:.2f} ms ({r['speedup']:.2f}x)" for r in cells) + " |")
    rest = args.paper_step_ms - roof[0]["paper_ms"]
    lines += ["", "The SDDMM's floor is reading dY and X, like the forward's, so the candidate budget C does not move "
              "it. The whole step: the paper way measured "
              f"{args.paper_step_ms:.1f} ms (`{args.step_from}`); if everything but the matmuls ({rest:.1f} ms "
              "there) stayed as it is, the step ratio would be "
              + ", ".join(f"{paper_ms_ratio(args.paper_step_ms, rest, r):.2f}x at N={r['n']}"
                          for r in roof if r["candidates"] == args.candidates[0]) + " (an estimate, not a measurement)."]
    return "\n".join(lines) + "\n"


def paper_ms_ratio(paper_step_ms: float, rest_ms: float, row: dict) -> float:
    """Step ratio over the paper way when only the matmuls change, to their roofline time."""
    return paper_step_ms / (rest_ms + row["ours_ms"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default=None, help="default: tiny on CPU, the paper model at width 8 on a GPU")
    ap.add_argument("--densities", type=float, nargs="+", default=None)
    ap.add_argument("--candidates", type=float, nargs="+", default=[0.5, 2.0])
    ap.add_argument("--report-n", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ceilings-from", type=Path,
                    default=Path("bench/results/gpu/H200_2026-11-26-run2_gpu_check.json"))
    ap.add_argument("--step-from", type=Path, default=Path("bench/results/gpu/H200_2026-11-27-run3_gpu_check.json"),
                    help="a committed GPU bench_train_step run: its paper-way step at 1/1024 for the estimate")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default=None)
    args, dev = parse_run_args(ap, argv)
    gpu = dev.type == "cuda"
    cfg = get_preset(args.preset or "tiny") if (args.preset or not gpu) else paper(width=8.0)
    args.preset_label = args.preset or ("tiny" if not gpu else "paper width 8")
    cfg.train = TrainConfig(**{**vars(cfg.train), "steps": 10_000})    # the anneal is over: final densities
    args.batch_size, args.seq_len = (64, 256) if gpu else (cfg.train.batch_size, cfg.train.seq_len)
    args.steps = args.steps or (10 if gpu else 18)
    args.embed_ratio_used = cfg.sparsity.final_embed_density / cfg.sparsity.weight_density
    args.backend = None
    args.ceil = json.loads(args.ceilings_from.read_text())["benches"]["bench_spmm"]["ceilings"]
    roof = roofline(args.ceil, args.candidates, args.report_n)
    args.paper_step_ms = next(r["step_ms"] for r in json.loads(args.step_from.read_text())["benches"]
                              ["bench_train_step"]["rows"] if r["engine"] == "paper" and r["density"] == 1 / 1024)
    measured = []
    for d in args.densities or ((1 / 1024,) if gpu else (1 / 64, 1 / 1024)):
        measured.append(dict(density=d, **measure(cfg, d, args, dev)))
    env = env_header(dev)
    cmd = ["python", "bench/bench_support_dw.py"] + (argv or sys.argv[1:])
    md = to_markdown(env, args, measured, roof, cmd)
    if args.out:
        doc = dict(env=env, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   measured=measured, roofline=roof)
        write_results(args.out, args.name or f"support_dw_step_{dev.type}", doc, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
