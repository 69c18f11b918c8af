"""AbsTopK of activations: our kernels against torch.topk + scatter, as a fraction of the memory floor.

    python bench/bench_abstopk.py [--out DIR] [--name NAME] [--tokens T] [--quick]

Rows of the AbsTopK sites of the paper-width models (T tokens x width, k = width / 8): d_model 2048 (attn/mlp
in: float32; attn/mlp out and v: bfloat16, width 2048; mlp neurons: bfloat16, width 8192) and d_model 768
(768 and 3072, bfloat16). Providers:
  topk+scatter       x.abs().topk(k).indices, then scatter into zeros: the straightforward torch way
  torch              kernels.abstopk's torch backend (k-th key from torch.topk, ties by a running count)
  triton             the per-row threshold search (default launch parameters), and variants of its launch
                     parameters (early exit on/off, rows per program, warps): triton[...]
  ... +bwd           forward and backward (the masked gradient) together, for each of the three
  copy               x.clone(): one read and one write of x, the floor of the forward
x_floor = time / copy time; speedup = topk+scatter time / time. Each provider is checked once against the
torch backend (bitwise, triton only). On a CPU only the torch providers run, at small sizes (and the Triton
ones under TRITON_INTERPRET=1: a smoke run, not a timing).
Writes OUT/NAME.json and OUT/NAME.md (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import env_header, guarded, time_ms, write_results  # noqa: E402

from sparseformer.kernels import available  # noqa: E402
from sparseformer.kernels.abstopk import abstopk, abstopk_rows  # noqa: E402

SITES = [  # (model, site, width, dtype): the d_model 2048 sites first (the goal)
    ("d2048", "attn_in/mlp_in", 2048, torch.float32),
    ("d2048", "attn_out/mlp_out/v", 2048, torch.bfloat16),
    ("d2048", "mlp_neuron", 8192, torch.bfloat16),
    ("d768", "attn_out/mlp_out/v", 768, torch.bfloat16),
    ("d768", "mlp_neuron", 3072, torch.bfloat16),
]
# launch variants timed beside the default (bench the choice, do not trust it)
VARIANTS = [dict(EARLY_EXIT=False), dict(EARLY_EXIT=True), dict(BLOCK_R=1), dict(num_warps=4), dict(num_warps=16)]


def topk_scatter(x, k):
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def bench_site(model, site, T, width, dtype, device, rows, variants):
    k = max(1, width // 8)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(T, width, generator=g).to(device=device, dtype=dtype)
    up = torch.randn(T, width, generator=g).to(device=device, dtype=dtype)
    base = dict(model=model, site=site, T=T, width=width, k=k, dtype=str(dtype).replace("torch.", ""),
                MB_moved=2 * x.numel() * x.element_size() / 2**20)
    copy = guarded(dict(base, provider="copy"), lambda: time_ms(lambda: x.clone(), device))
    rows.append(copy)
    want = abstopk_rows(x, k, "torch")[0] if device.type == "cpu" else None

    def fwd(name, fn, check=False):
        def go():
            got = fn()
            if check:
                ref = want if want is not None else abstopk_rows(x, k, "torch")[0]
                if not torch.equal(got, ref):
                    raise AssertionError("differs from the torch backend")
            return time_ms(fn, device)
        rows.append(guarded(dict(base, provider=name), go))

    def fwd_bwd(name, backend):
        def go():
            xg = x.detach().requires_grad_(True)

            def run():
                y = topk_scatter(xg, k) if backend is None else abstopk(xg, k, backend=backend)
                y.backward(up)
            return time_ms(run, device)
        rows.append(guarded(dict(base, provider=name), go))

    fwd("topk+scatter", lambda: topk_scatter(x, k))
    fwd("torch", lambda: abstopk_rows(x, k, "torch")[0], check=device.type == "cpu")
    fwd_bwd("topk+scatter +bwd", None)
    fwd_bwd("torch +bwd", "torch")
    if available(device)["triton"] is None:      # CUDA, or the interpreter (a smoke run of this script)
        from sparseformer.kernels.abstopk.triton_kernels import abstopk_fwd_triton
        from sparseformer.kernels.abstopk.triton_kernels import fwd_config
        fwd("triton", lambda: abstopk_fwd_triton(x, k)[0], check=True)
        default = fwd_config(T, width, dtype)
        for v in variants:
            if all(default.get(a) == b for a, b in v.items()):
                continue                              # the default itself: timed above
            label = ",".join(f"{a}={b}" for a, b in v.items())
            fwd(f"triton[{label}]", lambda v=v: abstopk_fwd_triton(x, k, **v)[0], check=True)
        fwd_bwd("triton +bwd", "triton")
    floor = copy.get("median_ms")
    ref = next((r.get("median_ms") for r in rows if r.get("provider") == "topk+scatter"
                and r.get("site") == site and r.get("model") == model), None)
    ref_bwd = next((r.get("median_ms") for r in rows if r.get("provider") == "topk+scatter +bwd"
                    and r.get("site") == site and r.get("model") == model), None)
    for r in rows:
        if r.get("site") != site or r.get("model") != model or "median_ms" not in r:
            continue
        if floor:
            r["x_floor"] = r["median_ms"] / floor
        against = ref_bwd if r["provider"].endswith("+bwd") else ref
        if against and r["provider"] != "copy":
            r["speedup"] = against / r["median_ms"]
    del x, up
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default=None, help="result file stem (default abstopk_<device type>)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=None, help="rows (default 16384 on a GPU, 2048 on a CPU)")
    ap.add_argument("--quick", action="store_true", help="the d_model 2048 sites only, no launch variants")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    T = args.tokens or (16384 if gpu else 2048)
    sites = [s for s in SITES if not args.quick or s[0] == "d2048"]
    if not gpu:                      # CPU: the narrow sites at d_model 128 / 512 of the tiny preset
        sites = [("tiny", "d_model", 128, torch.float32), ("tiny", "mlp_neuron", 512, torch.float32)]
    rows: list[dict] = []
    for model, site, width, dtype in sites:
        print(f"[bench_abstopk] {model} {site}: {T} x {width} {dtype}", file=sys.stderr, flush=True)
        # launch variants at the d_model 2048 sites only: each variant compiles anew (about a second each)
        bench_site(model, site, T, width, dtype, device, rows, [] if args.quick or model != "d2048" else VARIANTS)
    notes = [f"k = width / 8 (the paper's afrac 1/8); {T} rows; median of do_bench on a GPU, of 5 calls on a CPU",
             "x_floor = median / copy (x.clone(): one read + one write of x, the forward's floor); "
             "speedup = topk+scatter / this (forward, or forward + backward for the +bwd rows)",
             f"command: python bench/bench_abstopk.py {' '.join(argv if argv is not None else sys.argv[1:])}"]
    columns = ["model", "site", "dtype", "width", "k", "provider", "median_ms", "x_floor", "speedup", "MB_moved",
               "p20_ms", "p80_ms", "error"]
    prefix = os.path.join(str(args.out), args.name or f"abstopk_{device.type}")
    print(write_results(prefix, "AbsTopK of activations", env_header(device), rows, columns, notes))


if __name__ == "__main__":
    main()
