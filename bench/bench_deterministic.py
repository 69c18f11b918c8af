"""What `--deterministic` costs on a GPU, and whether the step is then reproducible to the bit.

Four copies of one model train on the same batches with the trainer's step (GPT whose layers hold k,
SparseAdamW, bf16 autocast on CUDA), steps interleaved: two in torch's default mode and two under
sparseformer.determinism.deterministic_mode (the `--deterministic` switch). Reported: the median step time
of each mode, their ratio, and whether each pair ended with the same bytes. CUBLAS_WORKSPACE_CONFIG is set
for the whole process (cuBLAS reads it once), so the default-mode steps run with it too: the ratio is the
cost of the deterministic algorithms alone. On the CPU (a quick check of the script) both modes are the same
code. Writes OUT/<name>.json and .md; bench/gpu_check.sh runs it on a GPU.

  python bench/bench_deterministic.py --out $OUT --name bench_deterministic
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")      # before torch starts cuBLAS

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_spmm import _frac, write_results  # noqa: E402
from bench_train_step import markov_batches  # noqa: E402
from common import device_line, env_header, sync  # noqa: E402

from sparseformer.checkpoint import resolve_device  # noqa: E402
from sparseformer.config import SparsityConfig, get_preset, paper  # noqa: E402
from sparseformer.determinism import deterministic_mode  # noqa: E402
from sparseformer.model import GPT  # noqa: E402
from sparseformer.sparsity.optimizer import SparseAdamW  # noqa: E402
from sparseformer.sparsity.params import configure, param_groups, write_ks  # noqa: E402
from sparseformer.train import _lm_loss  # noqa: E402

MODES = ("default", "deterministic")


def run(cfg, density: float, batches, device, steps_untimed: int) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.sparsity = SparsityConfig(weight_density=density, embed_density=min(1.0, 2 * density),
                                  protect_per_neuron=0, anneal_start=0.0, anneal_end=0.0)
    torch.manual_seed(0)
    base = GPT(cfg.model)
    configure(base, cfg.sparsity)
    write_ks(base, 0, 1, cfg.sparsity)
    base.to(device).train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    runs = {}
    for mode in MODES:
        for copy_id in (0, 1):
            model = copy.deepcopy(base)
            opt = SparseAdamW(param_groups(model, weight_decay=cfg.train.weight_decay), lr=cfg.train.lr,
                              betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps)
            runs[mode, copy_id] = (model, opt)
    del base
    times = {m: [] for m in MODES}
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device).contiguous(), y.to(device).contiguous()
        for (mode, _), (model, opt) in runs.items():
            with deterministic_mode(mode == "deterministic"):
                sync(device)
                t0 = time.perf_counter()
                loss = _lm_loss(model, x, y, autocast)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync(device)
            if i >= steps_untimed:
                times[mode].append((time.perf_counter() - t0) * 1e3)
    same = {m: all(torch.equal(a, b) for a, b in zip(runs[m, 0][0].state_dict().values(),
                                                     runs[m, 1][0].state_dict().values())) for m in MODES}
    ms = {m: statistics.median(times[m]) for m in MODES}
    return dict(density=density, default_ms=ms["default"], deterministic_ms=ms["deterministic"],
                slowdown=ms["deterministic"] / ms["default"], default_same_bytes=same["default"],
                deterministic_same_bytes=same["deterministic"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=float, default=4.0, help="paper model width on a GPU (d_model 256 x width)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--densities", type=float, nargs="+", default=[1 / 256])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="bench_deterministic")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    cfg = paper(width=args.width, n_layer=args.n_layer) if gpu else get_preset("tiny")
    batch, seq = (32, 256) if gpu else (2, 32)
    steps = args.steps or (12 if gpu else 3)
    batches = markov_batches(cfg.model.vocab_size, batch, seq, steps)
    env = env_header(dev)
    rows = [run(cfg, d, batches, dev, steps_untimed=2) for d in args.densities]
    m = cfg.model
    lines = [f"# The `--deterministic` switch: cost and bytes ({env['device']})", "", device_line(env),
             f"- model: n_layer {m.n_layer}, d_model {m.d_model}, d_mlp {m.d_mlp}, bigram table {m.bigram_table}; "
             f"batch {batch} x {seq}; {steps} steps per copy (2 untimed), two copies per mode, interleaved; "
             f"CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']} in both modes",
             f"- command: `python bench/bench_deterministic.py {' '.join(argv or sys.argv[1:])}`", "",
             "| density | default ms | deterministic ms | slowdown | default: same bytes twice | "
             "deterministic: same bytes twice |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {_frac(r['density'])} | {r['default_ms']:.1f} | {r['deterministic_ms']:.1f} | "
                     f"{r['slowdown']:.2f}x | {r['default_same_bytes']} | {r['deterministic_same_bytes']} |")
    md = "\n".join(lines) + "\n"
    if args.out:
        write_results(args.out, args.name, dict(env=env, args=vars(args), rows=rows), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
