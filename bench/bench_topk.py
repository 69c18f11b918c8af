"""Benchmark the exact top-k projection and the SparseAdamW step on the paper's parameter sets.

    python bench/bench_topk.py [--out bench/results] [--name topk_cpu] [--presets tiny,d1024] [--layers 1] [--quick]
    python bench/bench_topk.py --ranks 4 [--presets ...]      # the projection across ranks: collectives per step

writes OUT/NAME.json and OUT/NAME.md (NAME defaults to topk_<device type>, or topk_sharded_<device type>).
With --ranks N it instead simulates N ranks (one thread each, torch backend, each tensor's rows split as
FSDP2 splits them, the paper's per-neuron protection j = 4) and reports, for a cold step and a warm one
(a TopkState from the previous step), the collectives every rank made and the bytes each carried, with a
check that the kept set equals the single-process projection.

Per preset (the sparse tensors of one model) and provider it reports the median time, the time net of
restoring the dense weights (the projection is destructive, so every timed call first copies the dense
weights back), that time as a multiple of the one-read floor (reading every weight once, measured as a
torch.sum over the same bytes), and the speedup over per-tensor torch.topk. Providers: per-tensor
torch.topk and torch.kthvalue projections, project_topk_ per backend (cold = no TopkState; warm = a state
from the previous call), the torch kernel set driven through the phases (the path a multi-rank projection
takes; "phases", CPU only), torch's fused Adam alone, and SparseAdamW per backend without projection
(k=None), with projection, and with projection + the paper's per-neuron protection (j=4). Then the formats
the next step's sparse products read, for the weight matrices of the set: compact() per weight (the rebuild a
layer does when nothing hands it a format) against one emit_formats call for all of them (what SparseAdamW
hands the layers, docs/sparse-matmul.md), each with and without the padded rows (ELL), and the projection
followed by the emit (--no-formats skips them).

Parameter sets (the paper's model shapes and density rule, Gao et al. 2025): per layer c_attn [3d, d] + bias, attn c_proj [d, d] + bias, c_fc [4d, d]
+ bias, mlp c_proj [d, 4d] + bias; wte and lm_head [vocab=2048, d]. Densities: weights 1/64 (the train.py
example's L0frac); wte, lm_head and biases e/64 with e = d_model/256 (the paper's rule L0frac_E = e *
L0frac_W), at least 1/64 and at most 1. Presets: d2048 (8 layers), d1024 (12 layers), tiny (2 layers,
d 128, d_mlp 512).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import env_header, guarded, time_ms, write_results  # noqa: E402

from sparseformer.kernels import TopkState, available, compact, emit_formats, project_topk_  # noqa: E402
from sparseformer.kernels.topk import Comm, Target, project_, project_topk_sharded_, protect_view  # noqa: E402
from sparseformer.sparsity.optimizer import SparseAdamW  # noqa: E402

PRESETS = {"d2048": (2048, 8), "d1024": (1024, 12), "tiny": (128, 2)}
VOCAB = 2048
W_DENSITY = 1 / 64


def param_set(d_model: int, n_layer: int):
    """[(name, shape, k, protect)] of the sparse tensors of one model (see the module docstring)."""
    e = d_model / 256
    e_density = min(1.0, max(W_DENSITY, e * W_DENSITY))
    d, f = d_model, 4 * d_model
    out = [("wte", (VOCAB, d), e_density, None), ("lm_head", (VOCAB, d), e_density, None)]
    for layer in range(n_layer):
        for name, shape, prot in [("attn.c_attn", (3 * d, d), (4, "rows")), ("attn.c_proj", (d, d), (4, "cols")),
                                  ("mlp.c_fc", (f, d), (4, "rows")), ("mlp.c_proj", (d, f), (4, "cols"))]:
            out.append((f"{layer}.{name}.weight", shape, W_DENSITY, prot))
            out.append((f"{layer}.{name}.bias", (shape[0],), e_density, None))
    return [(n, s, max(1, int(dens * _numel(s))), p) for n, s, dens, p in out]


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class Weights:
    """The sparse tensors as views of one flat buffer, plus a pristine dense copy to restore from."""

    def __init__(self, specs, device, seed=0):
        g = torch.Generator(device="cpu").manual_seed(seed)
        sizes = [_numel(s) for _, s, _, _ in specs]
        self.pristine = (torch.randn(sum(sizes), generator=g) * 0.02).to(device)
        self.flat = self.pristine.clone()
        self.tensors, off = [], 0
        for (_, shape, _, _), n in zip(specs, sizes):
            self.tensors.append(self.flat[off:off + n].view(shape))
            off += n
        self.ks = [k for _, _, k, _ in specs]
        self.names = [n for n, _, _, _ in specs]
        self.nbytes = self.flat.numel() * self.flat.element_size()

    def restore(self):
        self.flat.copy_(self.pristine)


def topk_per_tensor(W: Weights):
    for w, k in zip(W.tensors, W.ks):
        a = w.abs().view(-1)
        idx = torch.topk(a, k, sorted=False).indices
        keep = torch.zeros_like(a, dtype=torch.bool).index_fill_(0, idx, True)
        w.masked_fill_(~keep.view_as(w), 0)


def kthvalue_per_tensor(W: Weights):
    for w, k in zip(W.tensors, W.ks):
        a = w.abs().view(-1)
        thr = torch.kthvalue(a, a.numel() - k + 1).values
        w.masked_fill_(a.view_as(w) < thr, 0)


def bench_projection(preset, W: Weights, backends, device, rows):
    base = {"preset": preset, "tensors": len(W.tensors), "params_M": W.flat.numel() / 1e6}
    floor = guarded(dict(base, provider="one-read floor (sum)"), lambda: time_ms(lambda: W.flat.sum(), device))
    restore = guarded(dict(base, provider="restore (copy)"), lambda: time_ms(W.restore, device))
    rows += [floor, restore]
    W.restore()
    project_topk_(W.tensors, W.ks, backend="torch")
    expected = W.flat.clone()

    def run(name, fn, check=True):
        def go():
            W.restore()
            fn()
            exact = bool(torch.equal(W.flat, expected)) if check else None
            return dict(time_ms(lambda: (W.restore(), fn()), device), exact=exact)
        rows.append(guarded(dict(base, provider=name), go))

    run("torch.topk per tensor", lambda: topk_per_tensor(W), check=False)
    run("torch.kthvalue per tensor", lambda: kthvalue_per_tensor(W), check=False)
    for b in backends:
        run(f"project_topk_[{b}] cold", lambda b=b: project_topk_(W.tensors, W.ks, backend=b))
        if b != "torch":
            st = TopkState()
            run(f"project_topk_[{b}] warm", lambda b=b, st=st: project_topk_(W.tensors, W.ks, backend=b, state=st))
    if device == "cpu":                 # the GPU check's time budget has no room for them
        targets = [Target(w, k) for w, k in zip(W.tensors, W.ks)]
        run("torch phases cold", lambda: project_(targets, "torch"))
        st = TopkState()
        run("torch phases warm", lambda: project_(targets, "torch", state=st))
    restore_ms = restore.get("median_ms")
    floor_ms = floor.get("median_ms")
    topk_ms = None
    for r in rows:
        if r.get("preset") != preset or "median_ms" not in r or r["provider"] in ("restore (copy)",):
            continue
        net = r["median_ms"] - restore_ms if restore_ms and not r["provider"].startswith("one-read") else r["median_ms"]
        r["net_ms"] = net
        if r["provider"] == "torch.topk per tensor":
            topk_ms = net
    for r in rows:
        if r.get("preset") == preset and r.get("net_ms") is not None:
            if floor_ms:
                r["x_floor"] = r["net_ms"] / floor_ms
            if topk_ms and r["net_ms"] > 0:
                r["speedup_vs_topk"] = topk_ms / r["net_ms"]


def _same_format(a, b) -> bool:
    """Emitted format a equals compact()'s b: counts, indices and the padded rows a holds."""
    return (a.nnz, a.max_row_nnz, a.max_col_nnz) == (b.nnz, b.max_row_nnz, b.max_col_nnz) and all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("row_ptr", "col32", "t_ptr", "t_row32", "t_perm")) and all(
        torch.equal(getattr(e, f), getattr(b.ell(o), f)) for o, e in a._ell.items() for f in ("col", "src", "row_len"))


def _with_ell(sw):
    for o in (False, True):
        if sw.ell_fits(o):
            sw.ell(o)
    return sw


def bench_formats(preset, W: Weights, backends, device, rows):
    """The next step's formats of the weight matrices (not biases or embeddings, which no sparse product
    reads): compact() per weight against one emit_formats call for all (with and without the padded rows
    ELL reads), and the projection followed by the emit. Run after bench_projection (its floor and restore
    rows); format rows are timed on projected weights, so they need no restore."""
    at = [i for i, n in enumerate(W.names) if n.endswith(".weight")]
    ws, ks = [W.tensors[i] for i in at], [W.ks[i] for i in at]
    base = {"preset": preset, "tensors": len(ws), "params_M": sum(w.numel() for w in ws) / 1e6}
    mine = {r["provider"]: r for r in rows if r.get("preset") == preset}
    floor_ms, restore_ms = mine["one-read floor (sum)"].get("median_ms"), mine["restore (copy)"].get("median_ms")
    # the weights' share of the one-read floor (a read is bandwidth-bound: time in proportion to bytes)
    w_floor = floor_ms * sum(w.numel() for w in ws) / W.flat.numel() if floor_ms else None
    W.restore()
    project_topk_(W.tensors, W.ks, backend="torch")
    ref = [compact(w) for w in ws]
    ell = [(False, True)] * len(ws)

    def timed(name, fn, check, net_of=0.0, floor=w_floor, **over):
        def go():
            out = dict(time_ms(fn, device), exact=check())
            out["net_ms"] = out["median_ms"] - net_of
            if floor:
                out["x_floor"] = out["net_ms"] / floor
            return out
        rows.append(guarded(dict(base, provider=name, **over), go))

    timed("format: compact() per weight", lambda: [compact(w) for w in ws], lambda: None)
    timed("format: compact()+ell per weight", lambda: [_with_ell(compact(w)) for w in ws], lambda: None)
    emitters = [b for b in backends if b != "cuda"]       # a forced "cuda" emit runs the Triton kernels
    for e in emitters:
        same = lambda e=e: all(map(_same_format, emit_formats(ws, ks, ell=ell, backend=e), ref))  # noqa: E731
        timed(f"format: emit_formats[{e}] all weights", lambda e=e: emit_formats(ws, ks, backend=e), same)
        timed(f"format: emit_formats[{e}]+ell all weights", lambda e=e: emit_formats(ws, ks, ell=ell, backend=e),
              same)
    for b in backends:
        e = b if b in emitters else emitters[-1]

        def project_emit(b=b, e=e):
            project_topk_(W.tensors, W.ks, backend=b)
            return emit_formats(ws, ks, backend=e)
        timed(f"project_topk_[{b}] + emit_formats[{e}]", lambda f=project_emit: (W.restore(), f()),
              lambda f=project_emit: (W.restore(), all(map(_same_format, f(), ref)))[1],
              net_of=restore_ms or 0.0, floor=floor_ms, tensors=len(W.tensors), params_M=W.flat.numel() / 1e6)
    W.restore()


def bench_optimizer(preset, specs, backends, device, rows):
    base = {"preset": preset, "tensors": len(specs)}
    ps = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for _, s, _, _ in specs]
    g = torch.Generator(device="cpu").manual_seed(1)
    for p in ps:
        p.grad = (torch.randn(p.shape, generator=g)).to(device)
    base["params_M"] = sum(p.numel() for p in ps) / 1e6

    def adam():
        try:
            opt = torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.95), eps=0.1, fused=True)
            opt.step()
        except Exception:
            opt = torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.95), eps=0.1, foreach=True)
        return time_ms(opt.step, device)
    adam_row = guarded(dict(base, provider="torch Adam (fused) alone"), adam)
    rows.append(adam_row)

    def sparse(b, mode):
        def go():
            groups = [dict(params=[p], k=None if mode == "dense" else k, name=n, weight_decay=0.1,
                           protect=prot if mode == "protect" else None) for p, (n, _, k, prot) in zip(ps, specs)]
            opt = SparseAdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=0.1, backend=b)
            return time_ms(opt.step, device)
        return go
    for b in backends:
        for mode in ("dense", "project", "protect"):
            rows.append(guarded(dict(base, provider=f"SparseAdamW[{b}] {mode}"), sparse(b, mode)))
    adam_ms = adam_row.get("median_ms")
    for r in rows:
        if r.get("preset") == preset and adam_ms and "median_ms" in r and "Adam" in r["provider"]:
            r["x_adam"] = r["median_ms"] / adam_ms


def _simulated_ranks(world, fn):
    """fn(rank, comm) on one thread per rank, collectives meeting at a barrier; results in rank order."""
    slots, barrier, out = [None] * world, threading.Barrier(world, timeout=600), [None] * world

    def meet(rank, t):
        slots[rank] = t.clone()
        barrier.wait()
        got = torch.stack(slots)
        barrier.wait()
        return got

    def comm(rank):
        return Comm(rank, world, lambda t: t.copy_(meet(rank, t).sum(0)), lambda t: meet(rank, t))

    threads = [threading.Thread(target=lambda r=r: out.__setitem__(r, fn(r, comm(r)))) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def bench_sharded(preset, specs, world, rows):
    """Collectives and bytes per step of the projection across `world` simulated ranks (see the docstring)."""
    W = Weights(specs, "cpu")
    rules = [p for _, _, _, p in specs]
    views = [protect_view(w, r) for w, r in zip(W.tensors, rules)]
    project_topk_([v for v, _ in views], W.ks, protect_per_row=[j for _, j in views], backend="torch")
    expected = [w.clone() for w in W.tensors]
    W.restore()
    chunks = [-(-w.shape[0] // world) for w in W.tensors]
    states = [TopkState() for _ in range(world)]
    base = {"preset": preset, "tensors": len(specs), "params_M": W.flat.numel() / 1e6, "ranks": world}
    for phase in ("cold", "warm"):
        W.restore()

        def rank_fn(r, comm):
            local = [w[r * c:(r + 1) * c] for w, c in zip(W.tensors, chunks)]
            return project_topk_sharded_(local, W.ks, [w.shape for w in W.tensors], [r * c for c in chunks], comm,
                                         protect=rules, names=W.names, backend="torch", state=states[r])

        stats = _simulated_ranks(world, rank_fn)
        s = stats[0]
        rows.append(dict(base, provider=f"across {world} ranks, {phase}",
                         passes=sum(what.startswith("histograms") for _, what, _ in s.calls),
                         reduce_calls=s.count("all_reduce"), reduce_kB=s.bytes("all_reduce") / 1e3,
                         gather_calls=s.count("all_gather"), gather_kB=s.bytes("all_gather") / 1e3,
                         total_kB=s.bytes() / 1e3,
                         same_on_all_ranks=all(x.calls == s.calls for x in stats),
                         exact=all(torch.equal(w, e) for w, e in zip(W.tensors, expected)),
                         calls="; ".join(f"{what} {b / 1e3:.1f} kB" for _, what, b in s.calls)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="folder for NAME.json and NAME.md")
    ap.add_argument("--name", default=None, help="result file stem (default topk_<device type>)")
    ap.add_argument("--presets", default=None, help="comma list of d2048,d1024,tiny (default: all on GPU, "
                                                    "tiny,d1024 on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (smaller runs)")
    ap.add_argument("--quick", action="store_true", help="2 layers per preset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-optimizer", action="store_true", help="skip the SparseAdamW rows")
    ap.add_argument("--no-formats", action="store_true", help="skip the format rows (compact vs emit_formats)")
    ap.add_argument("--note", action="append", default=[], help="a line for the notes (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--ranks", type=int, default=0, help="report the projection across this many simulated ranks")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    presets = (args.presets or ("tiny,d1024,d2048" if device != "cpu" else "tiny,d1024")).split(",")
    layers = args.layers if args.layers is not None else (2 if args.quick else None)
    if device == "cpu" and args.layers is None and not args.quick:
        layers = 1
    avail = available(device)
    backends = [b for b in ("torch", "triton", "cuda") if avail[b] is None and not (b == "triton" and device == "cpu")]
    rows: list[dict] = []
    notes = [f"backends timed: {', '.join(backends)}; dtype float32",
             "net_ms = median - restore (copy of the dense weights before each projection call)",
             "x_floor = net_ms / one-read floor; speedup_vs_topk = torch.topk net_ms / net_ms; "
             "x_adam = SparseAdamW step / torch fused Adam step"] + list(args.note)
    columns = ["preset", "provider", "params_M", "median_ms", "net_ms", "x_floor", "speedup_vs_topk", "x_adam",
               "p20_ms", "p80_ms", "exact", "error"]
    title, stem = "Top-k projection and SparseAdamW step", "topk"
    if args.ranks:
        columns = ["preset", "provider", "tensors", "params_M", "passes", "reduce_calls", "reduce_kB", "gather_calls",
                   "gather_kB", "total_kB", "same_on_all_ranks", "exact", "calls"]
        title, stem = "Top-k projection across ranks: collectives per step", "topk_sharded"
        notes = [f"{args.ranks} ranks simulated by threads on {device}, torch backend; bytes are what each rank "
                 "sends (an all-gather receives ranks x that)"] + notes[3:]
    else:
        notes.append("format rows (the weight matrices only): x_floor = net_ms / the one-read floor scaled to "
                     "their bytes; project + emit: net of restore, x_floor against the whole set's floor; exact = "
                     "every emitted format equals compact()'s")
    prefix = os.path.join(str(args.out), args.name or f"{stem}_{torch.device(device).type}")

    def save() -> str:          # after every section: a bench cut off by its time cap keeps what it finished
        return write_results(prefix, title, env_header(device), rows, columns, notes)

    for preset in presets:
        d_model, n_layer = PRESETS[preset]
        if layers is not None and preset != "tiny":
            n_layer = min(n_layer, layers)
            notes.append(f"{preset}: {n_layer} of {PRESETS[preset][1]} layers (smaller run)")
        specs = param_set(d_model, n_layer)
        if args.ranks:
            bench_sharded(preset, specs, args.ranks, rows)
            continue
        print(f"[bench_topk] {preset}: {len(specs)} tensors, {sum(_numel(s) for _, s, _, _ in specs) / 1e6:.1f}M "
              f"params on {device}", file=sys.stderr, flush=True)
        W = Weights(specs, device)
        bench_projection(preset, W, backends, device, rows)
        save()
        if not args.no_optimizer:
            bench_optimizer(preset, specs, backends, device, rows)
            save()
        if not args.no_formats:
            bench_formats(preset, W, backends, device, rows)
            save()
        del W
        if device != "cpu":
            torch.cuda.empty_cache()
    print(save())


if __name__ == "__main__":
    main()
