"""Sparse matmul benchmark: forward Y = X W^T, dX = dY W and dW of one linear, side by side.

For the MLP shapes of the paper's models (d_model 768/1024/2048, d_mlp = 4 d_model; up: K=d, N=4d and
down: K=4d, N=d) at 65,536 tokens and densities 1 .. 1/1024, providers in one run on one device:
  dense        torch matmul on a dense random weight (cuBLAS on a GPU, the CPU BLAS on a CPU)
  masked       the same on the top-k masked weight (what paper-style training runs)
  bsr          torch's BSR (W.to_sparse_bsr(32), F.linear), where it applies (fwd/dX, density <= 1/16)
  ours:<m>     each of our methods (the registry sparseformer.kernels.spmm.methods: gather, gather_t, ell, tiles on a GPU; csr,
               coo on a CPU); ours:auto is what the dispatcher picks for that weight; ours:support is the
               support-only dW (SDDMM); ours:compact is the format rebuild after a projection step, and
               ours:compact+ell the same plus the padded rows (ELL) of W and W^T that "ell" reads
  ideal        the roofline t_ideal (docs/sparse-matmul.md), from ceilings measured in this run:
               t_ideal = max(2 T K N d / P, (b T K + b T N + (b + 4) d K N) / BW), b = activation bytes.
               A dense dW has no sparsity to exploit: its ideal is the dense one (2 T K N / P).
Every provider is checked once against the fp32 masked reference before timing; a failing provider gets
an error row and the run goes on. Writes OUT/<name>.json and OUT/<name>.md.

  python bench/bench_spmm.py --out bench/results            # GPU if present, else CPU sizes
  python bench/bench_spmm.py --device cpu --quick --out bench/results
  python bench/bench_spmm.py --d-models 2048 --densities 0.0009765625 0.00390625 --out DIR   # ~1 min, H100
The environment header and sync come from bench/common.py; timing and result files stay local (GPU
timing here is do_bench with a per-run budget, results are one JSON document).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without install
from common import device_line, env_header, parse_run_args, sync  # noqa: E402
from sparseformer.kernels.sparse_format import compact  # noqa: E402
from sparseformer.kernels.spmm import dds, plan_linear, sdd  # noqa: E402
from sparseformer.kernels.spmm.methods import names as method_names  # noqa: E402

warnings.filterwarnings("ignore", message=".*Sparse.*beta state.*")
log = logging.getLogger("bench_spmm")

# run order = priority (a capped run keeps what finished): the sparsest first, the widest model first
DENSITIES = (1 / 1024, 1 / 256, 1 / 64, 1 / 16, 1 / 4, 1.0)
GPU_METHODS = tuple(m for m in method_names("triton") if m != "dense")    # the registry: kernels/spmm/methods.py
CPU_METHODS = tuple(m for m in method_names("torch") if m != "dense")
# the densest weight each sparse provider is run at (random top-k masks leave no empty 32x32 tile above
# ~1/256, so "tiles" only pays below; row-major gathers are the slow layout)
APPLIES = {"gather": 1 / 256, "gather_t": 1 / 64, "ell": 1 / 64, "tiles": 1 / 256, "csr": 1 / 16,
           "coo": 1 / 16, "support": 1 / 16}


# ---------------------------------------------------------------- helpers (the shared ones are in common.py)

def time_ms(fn, device: torch.device, reps: int = 10, rep_ms: float = 60) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of fn(); fn has been called once before (compile, autotune). GPU:
    triton's do_bench, timing for about `rep_ms` ms; CPU: `reps` calls."""
    if device.type == "cuda":
        from triton.testing import do_bench
        med, p20, p80 = do_bench(fn, warmup=10, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(med), float(p20), float(p80)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]   # noqa: E731
    return statistics.median(times), q(0.2), q(0.8)


def write_results(out: Path, name: str, doc: dict, markdown: str) -> None:
    """OUT/name.json and OUT/name.md, each written to a temp name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(doc, indent=1, default=str)), (".md", markdown)):
        path = out / f"{name}{suffix}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """Achievable matmul FLOP/s and copy bandwidth, measured here (the two roofline ceilings)."""
    n = 8192 if device.type == "cuda" else 768
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    ms = time_ms(lambda: a @ b, device, reps=7)[1]
    flops = 2 * n ** 3 / (ms * 1e-3)
    del a, b
    numel = (1 << 28) if device.type == "cuda" else (1 << 23)
    src = torch.empty(numel, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=7)[1]
    bw = 2 * numel * 4 / (ms * 1e-3)
    del src, dst
    return dict(flops=flops, bandwidth=bw)


def t_ideal_ms(T, K, N, d, act_bytes, ceil, op) -> float:
    """The roofline ideal for one product at density d (dense dW: the dense GEMM); docs/sparse-matmul.md."""
    if op == "dW(dense)":
        return 2 * T * K * N / ceil["flops"] * 1e3
    flop = 2 * T * K * N * d
    byts = act_bytes * T * K + act_bytes * T * N + (act_bytes + 4) * d * K * N
    return max(flop / ceil["flops"], byts / ceil["bandwidth"]) * 1e3


# ---------------------------------------------------------------- inputs and providers

def topk_weight(N, K, density, device, dtype, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense random W, the same W projected to its exact top-k by magnitude)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(N, K, generator=g).to(device=device, dtype=torch.float32)
    k = max(1, int(density * N * K))
    masked = torch.zeros_like(w)
    if k >= w.numel():
        masked.copy_(w)
    else:
        idx = w.abs().reshape(-1).topk(k, sorted=False).indices
        masked.view(-1)[idx] = w.view(-1)[idx]
    return w.to(dtype), masked.to(dtype)


def _bsr_provider(convert, use):
    """A provider on torch's BSR weight; the conversion is not timed, and if it fails the provider raises."""
    try:
        b = convert()
    except Exception as e:
        err = e

        def failing():
            raise err
        return failing
    return lambda: use(b)


def providers(op, w_dense, w, sw, x, dy, device, density, methods):
    """name -> zero-arg callable computing the product `op` ('fwd', 'dX', 'dW(dense)', 'dW(support)')."""
    out = {}
    if op == "fwd":
        out["dense"] = lambda: F.linear(x, w_dense)
        out["masked"] = lambda: F.linear(x, w)
        if density <= 1 / 16:
            out["bsr"] = _bsr_provider(lambda: w.to_sparse_bsr(32), lambda b: F.linear(x, b))
    elif op == "dX":
        out["dense"] = lambda: dy @ w_dense
        out["masked"] = lambda: dy @ w
        if density <= 1 / 16:
            out["bsr"] = _bsr_provider(lambda: w.t().contiguous().to_sparse_bsr(32), lambda b: F.linear(dy, b))
    elif op == "dW(dense)":
        out["dense"] = lambda: dy.t() @ x           # the paper's dense gradient; masked W plays no part
        return out
    elif op == "dW(support)":
        be = "triton" if device.type == "cuda" else "torch"
        out["dense"] = lambda: dy.t() @ x
        kernel = "sddmm" if be != "torch" else None          # the GPU's own kernel, not the GEMM fallback
        out["ours:support"] = lambda: sdd(dy, x, sw.row, sw.col, backend=be, method=kernel)
        return out
    key = "fwd" if op == "fwd" else "dx"
    a = x if op == "fwd" else dy
    for m in methods:
        if density > APPLIES.get(m, 1.0):
            continue                                  # far from its regime: slow, and not worth the time

        out[f"ours:{m}"] = (lambda m=m: dds(a, w, sw, key, m))
    plan = plan_linear(w, backend="triton" if device.type == "cuda" else "torch")
    out[f"ours:auto({plan.fwd})"] = lambda: dds(a, w, sw, key, plan.fwd)
    return out


def reference(op, w, sw, x, dy):
    if op == "fwd":
        return x.float() @ w.float().t()
    if op == "dX":
        return dy.float() @ w.float()
    if op == "dW(dense)":
        return dy.float().t() @ x.float()
    return (dy.float().t() @ x.float())[sw.row, sw.col]


def _check(fn, ref, scale, tol, name, device):
    """Call fn once (compile/autotune happen here) and compare with the reference; return rel err."""
    got = fn()
    sync(device)
    if name == "dense":
        return None
    err = (got.float() - ref).abs().max().item() / scale
    if not err <= tol:
        raise AssertionError(f"wrong result: max rel err {err:.3g} > {tol}")
    return err


def _time_all(fns: dict, device, slow_factor: float, reps: int, rep_ms: float) -> dict:
    """name -> (median, p20, p80, min) ms. GPU: do_bench per provider. CPU: interleaved rounds, so that load
    from other processes hits every provider alike; the minimum is the least disturbed number."""
    out = {}
    once = {}
    for name, fn in fns.items():          # one timed call each, to skip the hopeless ones
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        once[name] = (time.perf_counter() - t0) * 1e3
    base = once.get("dense", min(once.values()))
    slow = {n for n, t in once.items() if t > slow_factor * max(base, 1e-3) and n != "dense"}
    for n in slow:
        out[n] = (once[n],) * 4
    live = {n: f for n, f in fns.items() if n not in slow}
    if device.type == "cuda":
        for n, f in live.items():
            med, p20, p80 = time_ms(f, device, rep_ms=rep_ms)
            out[n] = (med, p20, p80, p20)
        return out
    times = {n: [] for n in live}
    for _ in range(reps):
        for n, f in live.items():
            t0 = time.perf_counter()
            f()
            times[n].append((time.perf_counter() - t0) * 1e3)
    for n, ts in times.items():
        ts.sort()
        out[n] = (statistics.median(ts), ts[int(0.2 * (len(ts) - 1))], ts[int(0.8 * (len(ts) - 1))], ts[0])
    return out


def _compact_ell(w):
    sw = compact(w)
    return sw.ell(False), sw.ell(True)


def run_case(T, K, N, density, dtype, device, methods, ceil, rows, slow_factor, reps, rep_ms):
    w_dense, w = topk_weight(N, K, density, device, dtype)
    sw = compact(w)
    g = torch.Generator(device=device).manual_seed(1)      # on the device: CPU randn of 0.7 G values is slow
    x = torch.randn(T, K, generator=g, device=device, dtype=dtype)
    dy = torch.randn(T, N, generator=g, device=device, dtype=dtype)
    act_bytes = torch.finfo(dtype).bits // 8
    base = dict(T=T, K=K, N=N, density=density, dtype=str(dtype).replace("torch.", ""))
    ops = ("fwd", "dX", "dW(dense)") + (("dW(support)",) if density <= APPLIES["support"] else ())
    for op in ops:
        ref = reference(op, w, sw, x, dy)
        scale = max(ref.abs().max().item(), 1e-30)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        ideal = t_ideal_ms(T, K, N, density, act_bytes, ceil, op)
        rows.append(dict(base, op=op, provider="ideal", ms=ideal, p20=ideal, p80=ideal))
        fns = providers(op, w_dense, w, sw, x, dy, device, density, methods)
        if op == "fwd":
            fns["ours:compact"] = lambda: compact(w)     # the per-step format rebuild, timed beside fwd
            if "ell" in methods and density <= APPLIES["ell"]:
                fns["ours:compact+ell"] = lambda: _compact_ell(w)
        good, new_rows = {}, {}
        for name, fn in fns.items():
            rebuild = name.startswith("ours:compact")
            row = new_rows[name] = dict(base, op="compact" if rebuild else op, provider=name)
            try:
                if not rebuild:
                    row["rel_err"] = _check(fn, ref, scale, tol, name, device)
                good[name] = fn
            except Exception as e:   # record and go on: one failing provider must not stop the run
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                log.warning("%s %s d=%g %s: %s", op, (T, K, N), density, name, row["error"])
        del ref
        try:
            timed = _time_all(good, device, slow_factor, reps, rep_ms)
        except Exception as e:
            timed = {}
            for row in new_rows.values():
                row.setdefault("error", f"timing failed: {type(e).__name__}: {e}"[:200])
        stat = 0 if device.type == "cuda" else 3      # reported time: GPU median, CPU minimum (see _time_all)
        dense_ms = timed["dense"][stat] if "dense" in timed else None
        for name, row in new_rows.items():
            if name in timed:
                med, p20, p80, mn = timed[name]
                row.update(ms=timed[name][stat], median_ms=med, p20=p20, p80=p80, min_ms=mn)
                if dense_ms and row["op"] == op:
                    row["speedup"] = dense_ms / row["ms"]
                    row["frac_ideal"] = ideal / row["ms"]
            rows.append(row)
    del x, dy, w, w_dense, sw
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _frac(d: float) -> str:
    return "1" if d >= 1 else f"1/{round(1 / d)}"


def to_markdown(env, ceil, rows, args) -> str:
    lines = [f"# Sparse matmul benchmark ({env['device']})", "",
             device_line(env),
             f"- measured ceilings: {ceil['flops'] / 1e12:.3g} TFLOP/s matmul, {ceil['bandwidth'] / 1e9:.3g} GB/s copy",
             f"- command: `{' '.join(args)}`",
             f"- cell: {'median' if env['device_type'] == 'cuda' else 'minimum (interleaved rounds; a shared CPU)'} ms"
             " · speedup over `dense` · fraction of the roofline ideal; `err` = the provider failed its reference "
             "check or could not run (see the JSON)", ""]
    shapes = sorted({(r["T"], r["K"], r["N"]) for r in rows}, key=lambda s: (s[1] * s[2], s[1]))
    for T, K, N in shapes:
        for op in ("fwd", "dX", "dW(dense)", "dW(support)", "compact"):
            sel = [r for r in rows if (r["T"], r["K"], r["N"]) == (T, K, N) and r["op"] == op]
            if not sel:
                continue
            provs = list(dict.fromkeys(r["provider"].split("(")[0] for r in sel))
            lines += [f"### {op}: T={T}, K={K}, N={N}", "",
                      "| density | " + " | ".join(provs) + " |", "|---" * (len(provs) + 1) + "|"]
            for d in sorted({r["density"] for r in sel}, reverse=True):
                cells = []
                for p in provs:
                    r = next((r for r in sel if r["density"] == d and r["provider"].split("(")[0] == p), None)
                    if r is None:
                        cells.append("")
                    elif "error" in r:
                        cells.append("err")
                    elif p == "ideal":
                        cells.append(f"{r['ms']:.3g}")
                    else:
                        extra = r["provider"][len(p):]
                        sp = f" · {r['speedup']:.2f}x" if "speedup" in r else ""
                        fi = f" · {100 * r['frac_ideal']:.0f}%" if "frac_ideal" in r else ""
                        cells.append(f"{r['ms']:.3g}{sp}{fi}{extra}")
                lines.append(f"| {_frac(d)} | " + " | ".join(cells) + " |")
            lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Errors", ""] + [f"- {r['op']} T={r['T']} K={r['K']} N={r['N']} d={_frac(r['density'])} "
                                      f"{r['provider']}: {r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT/<name>.json and .md")
    ap.add_argument("--name", default=None, help="result file stem (default spmm_<device type>)")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--d-models", type=int, nargs="+", default=None)
    ap.add_argument("--densities", type=float, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None,
                    help="our methods to run (default: gather gather_t ell tiles on a GPU, csr coo on a CPU)")
    ap.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: bf16 GPU, fp32 CPU)")
    ap.add_argument("--reps", type=int, default=15, help="CPU: interleaved timing rounds")
    ap.add_argument("--rep-ms", type=float, default=60.0,
                    help="GPU: do_bench timing budget per provider and product, ms (lower for a faster run)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (1 gives stable numbers on a shared machine)")
    ap.add_argument("--slow-factor", type=float, default=30.0, help="skip providers this much slower than dense")
    args, dev = parse_run_args(ap, argv)
    gpu = dev.type == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    if gpu:
        tokens = args.tokens or (16384 if args.quick else 65536)
        d_models = args.d_models or ((2048, 768) if args.quick else (2048, 1024, 768))
        densities = args.densities or ((1 / 1024, 1 / 256, 1 / 16, 1.0) if args.quick else DENSITIES)
        methods = GPU_METHODS
    else:
        tokens = args.tokens or (1024 if args.quick else 2048)
        d_models = args.d_models or ((128,) if args.quick else (128, 256))
        densities = args.densities or DENSITIES
        methods = CPU_METHODS
    methods = tuple(args.methods) if args.methods else methods
    env = env_header(dev)
    ceil = measure_ceilings(dev, dtype)
    log.info("device %s, ceilings %.3g TFLOP/s, %.3g GB/s", env["device"], ceil["flops"] / 1e12,
             ceil["bandwidth"] / 1e9)
    rows: list[dict] = []
    cmd = ["python", "bench/bench_spmm.py"] + (argv or sys.argv[1:])

    def save(done: bool):
        doc = dict(env=env, ceilings=ceil, args=vars(args) | {"out": str(args.out)}, complete=done, rows=rows)
        md = to_markdown(env, ceil, rows, cmd) + ("" if done else "\n(partial: the run did not finish)\n")
        if args.out:     # rewritten after every case, so a run cut short still leaves its numbers
            write_results(args.out, args.name or f"spmm_{dev.type}", doc, md)
        return md

    for d_model in d_models:
        for K, N in ((d_model, 4 * d_model), (4 * d_model, d_model)):
            for dens in densities:
                log.info("T=%d K=%d N=%d density %s", tokens, K, N, _frac(dens))
                run_case(tokens, K, N, dens, dtype, dev, methods, ceil, rows, args.slow_factor, args.reps,
                         args.rep_ms)
                save(False)
    print(save(True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
