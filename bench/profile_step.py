"""Where the time of one training step goes: a torch.profiler breakdown by category, per engine.

    python bench/profile_step.py --out bench/results                     # tiny preset on the CPU
    python bench/profile_step.py --device cuda --out $OUT                # paper width 8 at 1/1024 on a GPU

The engines and their setup are bench_train_step.py's (same model, init, batches, optimizers); each is run
for --warmup steps, then --timed steps without the profiler (the wall time of a step), then --profiled
steps under torch.profiler. Every profiled op (CPU) or kernel (GPU: each kernel is charged to the op that
launched it) is put in one category:

  forward and dX products   matmuls of the linears in the forward pass, and their dX in the backward
  dW products               the weight (and bias) gradients of the linears: a matmul that sums over tokens
  format build              what a sparse linear does outside its product: density, plan, sparse format;
                            and the optimizer's batched emit of the next step's formats (kernels.emit_formats)
  AbsTopK                   the activation top-k and its masked backward
  attention                 scaled dot-product attention and its head reshapes
  norms and elementwise     RMSNorm, GELU, residual adds (forward and backward)
  casts and copies          dtype casts (autocast) and layout copies
  projection + Adam         the optimizer step: gradient normalisation, Adam, top-k projection, decay
  the rest                  embeddings, logits, loss, zeroing gradients

The owner of an op is found from module labels (forward hooks open a profiler range per module) and, for
the backward, from the autograd node's sequence number, which links it to the forward op that created it.
Reported per step: ms per category, its share, the wall time, and on a GPU the device time the profiler
could not attribute and the idle time (wall - busy). Writes OUT/NAME.json and OUT/NAME.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_train_step import add_model_args, bench_config, build, initial_model, markov_batches  # noqa: E402
from common import env_header, sync, write_results  # noqa: E402

from sparseformer.checkpoint import resolve_device  # noqa: E402
from sparseformer.config import SparsityConfig  # noqa: E402
from sparseformer.model import AbsTopK, CausalSelfAttention  # noqa: E402

CATEGORIES = ("forward and dX products", "dW products", "format build", "AbsTopK", "attention",
              "norms and elementwise", "casts and copies", "projection + Adam", "the rest")
MATMUL_CATEGORIES = ("forward and dX products", "dW products")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_mm",
              "aten::baddbmm", "aten::addmv", "aten::mv"}
CAST_OPS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous", "aten::_copy_from",
            "aten::_copy_from_and_resize"}
PRODUCT_SCOPES = {"_SparseLinearFn"}        # the autograd Function of a sparse linear's products
BACKWARD = "autograd::engine::evaluate_function: "


def module_label(m: nn.Module) -> str | None:
    """The profiler label of a module kind whose ops get their own category, or None (no label)."""
    if isinstance(m, nn.Linear):
        return "mod::linear"
    if isinstance(m, AbsTopK):
        return "mod::abstopk"
    if isinstance(m, CausalSelfAttention):
        return "mod::attention"
    if isinstance(m, (nn.RMSNorm, nn.LayerNorm)):
        return "mod::norm"
    if isinstance(m, (nn.GELU, nn.ReLU)):
        return "mod::act"
    if isinstance(m, nn.Embedding):
        return "mod::embedding"
    if type(m).__name__ in ("MLP", "Block"):
        return "mod::block"
    return None


class ModuleLabels:
    """Open a profiler range named by module_label around every labelled module's forward."""

    def __init__(self, model: nn.Module):
        self.handles = []
        self.open: dict[int, list] = defaultdict(list)
        for m in model.modules():
            label = module_label(m)
            if label is not None:
                self.handles.append(m.register_forward_pre_hook(self._enter(label)))
                self.handles.append(m.register_forward_hook(self._exit))

    def _enter(self, label):
        def hook(m, args):
            rf = record_function(label)
            rf.__enter__()
            self.open[id(m)].append(rf)
        return hook

    def _exit(self, m, args, out):
        self.open[id(m)].pop().__exit__(None, None, None)

    def remove(self):
        for h in self.handles:
            h.remove()


def _chain(ev) -> list[str]:
    """Names of ev and its ancestors, innermost first."""
    out = []
    while ev is not None:
        out.append(ev.name)
        ev = ev.cpu_parent
    return out


def _inner_label(names) -> str | None:
    return next((n for n in names if n.startswith("mod::")), None)


def forward_labels(events) -> dict:
    """(thread, sequence_nr) -> module label of the forward op that created that autograd node (the last op
    recorded with the number: ops that create no node only peek at the next number)."""
    last: dict = {}
    for ev in events:
        if ev.device_type != DeviceType.CPU or ev.sequence_nr < 0:
            continue
        names = _chain(ev)
        if any(n.startswith(BACKWARD) for n in names):
            continue
        key = (ev.thread, ev.sequence_nr)
        if key not in last or ev.time_range.start >= last[key][0]:
            last[key] = (ev.time_range.start, _inner_label(names))
    return {k: v[1] for k, v in last.items()}


def _is_dw(ev, kernel: str | None, tokens: int) -> bool:
    """A linear's backward op that produces a weight or bias gradient: a product summing over the tokens,
    a support SDDMM, or the bias's sum over tokens."""
    if kernel and "sddmm" in kernel.lower():
        return True
    if ev.name in ("aten::sum", "aten::sum.dim_IntList"):
        return True
    shapes = ev.input_shapes or []
    if ev.name in ("aten::mm", "aten::addmm") and len(shapes) >= 2:
        a, b = (shapes[0], shapes[1]) if ev.name == "aten::mm" else (shapes[1], shapes[2])
        return len(a) == 2 and len(b) == 2 and a[1] == tokens == b[0]
    return False


def classify(ev, kernel: str | None, fwd_labels: dict, tokens: int) -> str:
    """The category of op `ev` (or of the kernel it launched)."""
    names = _chain(ev)
    if "sparseformer::emit_formats" in names:
        return "format build"
    if "step::optimizer" in names:
        return "projection + Adam"
    node = next((n for n in names if n.startswith(BACKWARD)), None)
    label = _inner_label(names)
    if node is not None and label is None:
        node_ev = ev
        while node_ev is not None and not node_ev.name.startswith(BACKWARD):
            node_ev = node_ev.cpu_parent
        label = fwd_labels.get((node_ev.fwd_thread, node_ev.sequence_nr))
    if label == "mod::abstopk" or any("abstopk" in n.lower() for n in names):
        return "AbsTopK"
    if label == "mod::linear":
        in_product = any(n in MATMUL_OPS or n in PRODUCT_SCOPES for n in names) or (node is not None)
        if node is not None and _is_dw(ev, kernel, tokens):
            return "dW products"
        if in_product and not any(n in CAST_OPS for n in names[:_first(names, MATMUL_OPS | PRODUCT_SCOPES)]):
            return "forward and dX products"
        if any(n in CAST_OPS for n in names):
            return "casts and copies"
        return "format build" if node is None else "forward and dX products"
    if any(n in CAST_OPS for n in names):
        return "casts and copies"
    if label == "mod::attention":
        return "attention"
    if label in ("mod::norm", "mod::act", "mod::block"):
        return "norms and elementwise"
    return "the rest"


def _first(names, group) -> int:
    """Index of the innermost name in `group` (len(names) when none): casts inside a product are the product's."""
    return next((i for i, n in enumerate(names) if n in group), len(names))


def breakdown(events, tokens: int, on_gpu: bool) -> dict:
    """Per category the time (us, summed over the profiled steps), the top items, and the unattributed device
    time. CPU: each op's self time. GPU: each kernel's time, charged to the op that launched it."""
    fwd_labels = forward_labels(events)
    per_cat: dict[str, float] = defaultdict(float)
    items: dict[tuple, float] = defaultdict(float)
    attributed = 0.0
    device_total = 0.0
    for ev in events:
        if on_gpu and ev.device_type != DeviceType.CPU:
            device_total += ev.time_range.end - ev.time_range.start
            continue
        if ev.device_type != DeviceType.CPU or ev.is_async:
            continue
        if on_gpu:
            for k in ev.kernels:
                cat = classify(ev, k.name, fwd_labels, tokens)
                per_cat[cat] += k.duration
                items[(cat, k.name[:90])] += k.duration
                attributed += k.duration
        elif ev.self_cpu_time_total > 0 and not ev.name.startswith(("mod::", "step::")):
            cat = classify(ev, None, fwd_labels, tokens)
            per_cat[cat] += ev.self_cpu_time_total
            items[(cat, ev.name[:90])] += ev.self_cpu_time_total
    total = sum(per_cat.values())
    top = sorted(items.items(), key=lambda kv: -kv[1])[:25]
    return dict(per_category_us=dict(per_cat), total_us=total, device_total_us=device_total if on_gpu else None,
                unattributed_us=(device_total - attributed) if on_gpu else None,
                top=[dict(category=c, name=n, us=v) for (c, n), v in top])


def one_step(model, opt, x, y, autocast):
    with record_function("step::forward"), autocast:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    with record_function("step::zero_grad"):
        opt.zero_grad(set_to_none=True)
    with record_function("step::backward"):
        loss.backward()
    with record_function("step::optimizer"):
        opt.step()
    return loss.detach()


def profile_engine(cfg, density, engine, batches, device, args) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.sparsity = SparsityConfig(weight_density=density, embed_density=min(1.0, density * args.embed_ratio_used),
                                  protect_per_neuron=0)
    init = initial_model(cfg, args.seed, device)
    model, opt = build(cfg, density, engine, init, device, args)
    del init
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    tokens = batches[0][0].numel()
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    n_warm, n_timed = args.warmup, args.timed
    walls = []
    for i in range(n_warm + n_timed):
        x, y = batches[i % len(batches)]
        sync(device)
        t0 = time.perf_counter()
        one_step(model, opt, x, y, autocast)
        sync(device)
        if i >= n_warm:
            walls.append((time.perf_counter() - t0) * 1e3)
    labels = ModuleLabels(model)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=acts, record_shapes=True) as prof:
            for i in range(args.profiled):
                x, y = batches[(n_warm + n_timed + i) % len(batches)]
                one_step(model, opt, x, y, autocast)
            sync(device)
        if args.trace:
            prof.export_chrome_trace(os.path.join(args.trace, f"trace_{engine.replace('@', '_')}.json"))
    finally:
        labels.remove()
    res = breakdown(prof.events(), tokens, device.type == "cuda")
    n = args.profiled
    per_step = {c: res["per_category_us"].get(c, 0.0) / n / 1e3 for c in CATEGORIES}
    total = sum(per_step.values())
    outside = total - sum(per_step[c] for c in MATMUL_CATEGORIES)
    wall = statistics.median(walls)
    row = dict(engine=engine, density=density, tokens=tokens, wall_step_ms=wall, profiled_ms=total,
               outside_matmul_share=outside / total if total else None, per_step_ms=per_step,
               top=[dict(t, ms_per_step=t["us"] / n / 1e3) for t in res["top"]])
    if res["device_total_us"] is not None:
        row["device_busy_ms"] = res["device_total_us"] / n / 1e3
        row["unattributed_ms"] = res["unattributed_us"] / n / 1e3
        row["idle_ms"] = wall - row["device_busy_ms"]
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _frac(d: float) -> str:
    return "1" if d >= 1 else f"1/{round(1 / d)}"


def to_markdown(env, cfg, rows, args, argv) -> str:
    m = cfg.model
    what = "kernel time on the GPU" if env["device_type"] == "cuda" else "CPU self time of each op"
    lines = [f"# Where a training step's time goes ({env['device']})", "",
             f"- device: {env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
             f"commit {env['commit']}, {env['date']}, {env['cpu_count']} CPUs / {env['torch_threads']} threads",
             f"- model: {args.preset_label}: n_layer {m.n_layer}, d_model {m.d_model}, d_mlp {m.d_mlp}, afrac "
             f"{m.afrac} at {', '.join(m.afrac_sites)}; batch {args.batch_size} x {args.seq_len} tokens; weight "
             f"density {_frac(args.density)}",
             f"- {args.warmup} warm-up steps, wall time = median of {args.timed} steps without the profiler, "
             f"then {args.profiled} profiled steps ({what}, per step)",
             f"- command: `{' '.join(argv)}`", ""]
    head = "| category | " + " | ".join(f"{r['engine']} ms | share" for r in rows) + " |"
    lines += [head, "|---|" + "---|---|" * len(rows)]
    for c in CATEGORIES:
        cells = []
        for r in rows:
            v = r["per_step_ms"][c]
            cells.append(f"{v:.3g} | {100 * v / r['profiled_ms']:.1f}%" if r["profiled_ms"] else " | ")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **profiled total** | " + " | ".join(f"**{r['profiled_ms']:.4g}** | 100%" for r in rows) + " |")
    lines.append("| outside the matmuls | " + " | ".join(
        f"{r['profiled_ms'] * r['outside_matmul_share']:.3g} | {100 * r['outside_matmul_share']:.1f}%"
        for r in rows) + " |")
    lines.append("| wall step (no profiler) | " + " | ".join(f"{r['wall_step_ms']:.4g} | " for r in rows) + " |")
    if rows and "device_busy_ms" in rows[0]:
        for key, name in (("device_busy_ms", "device busy"), ("unattributed_ms", "kernels not attributed"),
                          ("idle_ms", "device idle (wall - busy)")):
            lines.append(f"| {name} | " + " | ".join(f"{r[key]:.3g} | " for r in rows) + " |")
    for r in rows:
        lines += ["", f"## Top items: {r['engine']}", "", "| category | op or kernel | ms per step |", "|---|---|---|"]
        lines += [f"| {t['category']} | `{t['name']}` | {t['ms_per_step']:.3g} |" for t in r["top"]]
    return "\n".join(lines) + "\n"


def run(argv=None) -> list[dict]:
    """Parse the command line, profile each engine and write the results; returns the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--density", type=float, default=1 / 1024)
    ap.add_argument("--engines", nargs="+", default=["ours", "paper"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timed", type=int, default=3)
    ap.add_argument("--profiled", type=int, default=2)
    ap.add_argument("--backend", default=None, help="SparseAdamW kernels backend")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trace", default=None, help="also write a chrome trace per engine into this folder")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    cfg = bench_config(args, dev.type == "cuda")
    # build() reads the support-dW knobs even for the dense-dW engines profiled here
    args.dense_every, args.candidates = 8, 0.5
    n_batches = args.warmup + args.timed + args.profiled
    batches = markov_batches(cfg.model.vocab_size, args.batch_size, args.seq_len, n_batches, args.seed)
    env = env_header(dev)
    rows = []
    for engine in args.engines:
        print(f"[profile_step] {engine} at density {_frac(args.density)}", file=sys.stderr, flush=True)
        rows.append(profile_engine(cfg, args.density, engine, batches, dev, args))
    cmd = ["python", "bench/profile_step.py"] + (argv if argv is not None else sys.argv[1:])
    md = to_markdown(env, cfg, rows, args, cmd)
    if args.out:
        doc = dict(env=env, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   model=vars(cfg.model), categories=list(CATEGORIES), rows=rows)
        from bench_spmm import write_results as write_doc
        write_doc(args.out, args.name or f"profile_step_{dev.type}", doc, md)
    print(md)
    return rows


if __name__ == "__main__":
    run()
