"""Training-step throughput: our engine against the paper's way, same model, same machine, same run.

Engines (the GPT of sparseformer.model at a fixed weight density, protection off, same init and batches):
  paper         nn.Linear on masked weights (dense matmuls), AbsTopK by torch.topk + scatter,
                torch.optim.Adam (fused on CUDA), then a per-tensor torch.topk projection and decoupled
                weight decay, as the paper's official script runs it
  ours          SparseLinear (the dispatcher's matmul method per layer) + SparseAdamW, dW "dense" (the
                same algorithm as paper)
  ours-support  the same with dW "support" (opt-in, changes the algorithm: dW on the support plus
                candidates by the SDDMM method the dispatcher picks, dense every --dense-every optimizer
                steps; bench_support_dw.py times it per refresh interval)
  ours@M        "ours" with every sparse layer forced to matmul method M (e.g. ours@ell, ours@dense), to
                measure a kernel the dispatcher does not pick yet; ours-support@M likewise
The sparse tensors and their k come from sparseformer.sparsity.params, as in training. Steps of the
engines are interleaved (step i of each, then step i+1), so machine load hits all alike. Reported:
tokens/s from the median step time (and from the fastest step), speedup over paper, and the loss after
--steps steps of each from the same start, to show that they train the same. Data: a fixed random
Markov chain over the vocabulary (learnable, no corpus needed). Writes OUT/<name>.json and .md.

  python bench/bench_train_step.py --out bench/results                 # tiny preset on CPU
  python bench/bench_train_step.py --device cuda --out $OUT            # d_model 2048, 8 layers on a GPU
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_spmm import _frac, write_results  # noqa: E402
from common import device_line, env_header, parse_run_args, sync  # noqa: E402

from sparseformer.config import SparsityConfig, TrainConfig, get_preset, paper  # noqa: E402
from sparseformer.layers import densify, sparse_layers, sparse_tensors, sparsify  # noqa: E402
from sparseformer.model import GPT, AbsTopK  # noqa: E402
from sparseformer.sparsity.optimizer import SparseAdamW  # noqa: E402
from sparseformer.sparsity.params import configure, write_ks  # noqa: E402

log = logging.getLogger("bench_train_step")
WEIGHT_LINEARS = r"(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj|lm_head)$"   # every sparse Linear
GRAD_RMS_EPS = 1e-5


class PaperWayAdamW:
    """Grad RMS normalisation, torch Adam, per-tensor torch.topk projection (protected top-j scored 1e10),
    decoupled weight decay: the baseline optimizer, written the straightforward way."""

    def __init__(self, groups, lr, betas, eps, fused):
        self.groups = groups
        self.params = [p for g in groups for p in g["params"]]
        self.adam = torch.optim.Adam([dict(params=g["params"]) for g in groups], lr=lr, betas=betas, eps=eps,
                                     fused=fused or None)
        self.lr = lr

    def zero_grad(self, set_to_none=True):
        self.adam.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self):
        grads = [p.grad for p in self.params if p.grad is not None]
        sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
        rms = math.sqrt(float(sq) / sum(g.numel() for g in grads))
        torch._foreach_mul_(grads, 1.0 / (rms + GRAD_RMS_EPS))
        self.adam.step()
        for g in self.groups:
            if g.get("k") is not None:
                for p in g["params"]:
                    _topk_project_(p, int(g["k"]), g.get("protect"))
        for g in self.groups:
            if g.get("weight_decay"):
                torch._foreach_mul_(g["params"], 1 - self.lr * g["weight_decay"])


class PaperAbsTopK(AbsTopK):
    """AbsTopK the straightforward way: torch.topk of |x| per row, the kept values scattered into zeros."""

    def forward(self, x):
        if self.k is None or self.k >= x.shape[-1]:
            return x
        idx = x.abs().topk(self.k, dim=-1, sorted=False).indices
        return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def _paper_abstopk(model):
    for name, m in list(model.named_modules()):
        if type(m) is AbsTopK:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, PaperAbsTopK(m.k))


def _topk_project_(p, k, protect):
    score = p.detach().abs()
    if protect:
        j, axis = protect
        view = score if axis == "rows" else score.t()
        view.scatter_(1, view.topk(j, dim=1).indices, 1e10)
    keep = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
    keep[score.reshape(-1).topk(k, sorted=False).indices] = True
    p.mul_(keep.view_as(p))


def markov_batches(vocab, batch, seq, steps, seed=0):
    """`steps` (x, y) batches of a fixed random chain: each token has 4 equally likely successors."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(vocab, (vocab, 4), generator=g)
    out = []
    for _ in range(steps):
        toks = torch.empty(batch, seq + 1, dtype=torch.long)
        toks[:, 0] = torch.randint(vocab, (batch,), generator=g)
        choice = torch.randint(4, (batch, seq), generator=g)
        for t in range(seq):
            toks[:, t + 1] = succ[toks[:, t], choice[:, t]]
        out.append((toks[:, :-1], toks[:, 1:]))
    return out


def build(cfg, density, engine, init_model, device, args):
    """(model, optimizer) of one engine: a copy of `init_model` (already projected, on `device`)."""
    model = copy.deepcopy(init_model).train()
    kind, _, method = engine.partition("@")
    if kind.startswith("ours"):
        sparsify(model, density, include=WEIGHT_LINEARS, project=False,
                 dw_mode="support" if kind == "ours-support" else "dense",
                 dense_every=args.dense_every, candidates=args.candidates, method=method or None)
    groups = _groups(model, cfg)
    tc = cfg.train
    if engine == "paper":
        _paper_abstopk(model)
        opt = PaperWayAdamW(groups, tc.lr, (tc.beta1, tc.beta2), tc.eps, fused=device.type == "cuda")
    else:
        opt = SparseAdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, backend=args.backend)
    return model, opt


def _groups(model, cfg):
    """One group per sparse tensor with its final k (the paper way reads k from its groups; SparseAdamW
    takes a group's k too), then the dense parameters, decayed (>= 2-D) or not, as in training."""
    sc, tc = cfg.sparsity, cfg.train
    budgets = _final_budgets(cfg)
    groups, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        wd = tc.weight_decay if (p.ndim >= 2 and not name.endswith("bigram_table")) else 0.0
        if name in budgets:
            k, protect = budgets[name]
            groups.append(dict(params=[p], name=name, k=k if k < p.numel() else None, protect=protect,
                               weight_decay=wd, lr=tc.lr))
        else:
            (decay if wd else no_decay).append(p)
    groups.append(dict(params=decay, name="decay", k=None, weight_decay=tc.weight_decay, lr=tc.lr))
    groups.append(dict(params=no_decay, name="no_decay", k=None, weight_decay=0.0, lr=tc.lr))
    return [g for g in groups if g["params"]]


_BUDGETS: dict[str, dict] = {}     # per config (its JSON): building a GPT to read them is not free


def _final_budgets(cfg) -> dict:
    """{name: (k, protect)} of every sparse tensor at the end of the schedule, from the GPT's own layers."""
    key = cfg.to_json()                # not id(cfg): a freed config's id is reused by the next density's copy
    if key not in _BUDGETS:
        model = GPT(cfg.model)
        configure(model, cfg.sparsity)
        write_ks(model, cfg.train.steps, cfg.train.steps, cfg.sparsity)
        _BUDGETS[key] = {t.name: (t.k, t.protect) for t in sparse_tensors(model)}
    return _BUDGETS[key]


def initial_model(cfg, seed, device):
    """GPT init (plain nn.Linear) on `device`, projected to the final ks: the same start for every engine."""
    torch.manual_seed(seed)
    model = densify(GPT(cfg.model)).to(device)
    with torch.no_grad():
        for g in _groups(model, cfg):
            if g.get("k") is not None:
                for p in g["params"]:
                    _topk_project_(p, g["k"], g.get("protect"))
    return model


def step_fn(model, opt, x, y, autocast):
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def run_density(cfg, density, engines, batches, device, args) -> list[dict]:
    cfg = copy.deepcopy(cfg)
    cfg.sparsity = SparsityConfig(weight_density=density, embed_density=min(1.0, density * args.embed_ratio_used),
                                  protect_per_neuron=0)
    init = initial_model(cfg, args.seed, device)
    built = {e: build(cfg, density, e, init, device, args) for e in engines}
    del init
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    times = {e: [] for e in engines}
    losses = {e: [] for e in engines}
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device), y.to(device)
        for e in engines:
            model, opt = built[e]
            sync(device)
            t0 = time.perf_counter()
            loss = step_fn(model, opt, x, y, autocast)
            sync(device)
            if i >= args.warmup:
                times[e].append(time.perf_counter() - t0)
            losses[e].append(float(loss))
    tokens = batches[0][0].numel()
    base = statistics.median(times["paper"]) if "paper" in times else None
    rows = []
    for e in engines:
        model, _ = built[e]
        med, best = statistics.median(times[e]), min(times[e])
        layers = sparse_layers(model)
        methods = sorted({f"{lay.plan(torch.empty(1, lay.in_features, device=device)).fwd}" for lay in
                          layers.values()}) if layers else ["dense (masked)"]
        nnz_ok = all(int(torch.count_nonzero(g["params"][0])) <= g["k"] for g in _groups(model, cfg)
                     if g.get("k") is not None)
        rows.append(dict(density=density, engine=e, tokens_per_step=tokens, step_ms=med * 1e3,
                         best_step_ms=best * 1e3, tokens_per_s=tokens / med, best_tokens_per_s=tokens / best,
                         speedup=(base / med) if base else None, final_loss=losses[e][-1],
                         first_loss=losses[e][0], max_loss_diff_vs_paper=(
                             max(abs(a - b) for a, b in zip(losses[e], losses["paper"])) if base else None),
                         exact_k=nnz_ok, matmul_methods=methods))
        log.info("density %s %-13s %8.0f tok/s (median step %.1f ms) loss %.4f -> %.4f", _frac(density), e,
                 rows[-1]["tokens_per_s"], med * 1e3, losses[e][0], losses[e][-1])
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def to_markdown(env, cfg, rows, args, argv) -> str:
    m = cfg.model
    lines = [f"# Training-step throughput: ours vs the paper's way ({env['device']})", "",
             device_line(env),
             f"- model: {args.preset_label}: n_layer {m.n_layer}, d_model {m.d_model}, d_mlp {m.d_mlp}, "
             f"n_head {m.n_head}, afrac {m.afrac}; batch {args.batch_size} x {args.seq_len} tokens; "
             f"embed/bias density {args.embed_ratio_used:g} x d; protection off",
             f"- {args.steps} steps per engine from the same projected init on the same batches (first "
             f"{args.warmup} untimed); ours-support: dense dW every {args.dense_every} steps, candidates "
             f"{args.candidates:g} x nnz",
             f"- command: `{' '.join(argv)}`", "",
             "| density | engine | tokens/s (median) | tokens/s (best) | step ms | speedup vs paper | "
             f"loss step 1 | loss step {args.steps} | max loss diff vs paper | exact k | matmul |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {_frac(r['density'])} | error | {r['error']} |" + " |" * 8)
            continue
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        diff = f"{r['max_loss_diff_vs_paper']:.2g}" if r["max_loss_diff_vs_paper"] is not None else ""
        lines.append(f"| {_frac(r['density'])} | {r['engine']} | {r['tokens_per_s']:.0f} | "
                     f"{r['best_tokens_per_s']:.0f} | {r['step_ms']:.1f} | {sp} | {r['first_loss']:.4f} | "
                     f"{r['final_loss']:.4f} | {diff} | {r['exact_k']} | {', '.join(r['matmul_methods'])} |")
    return "\n".join(lines) + "\n"


def add_model_args(ap) -> None:
    """The command-line options that pick the model and batch (read by bench_config)."""
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default=None, help="config preset (default: tiny on CPU, paper width 8 on GPU)")
    ap.add_argument("--width", type=float, default=8.0, help="paper model width multiplier when no preset")
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--embed-ratio", type=float, default=None,
                    help="embedding/bias density over weight density (default: the preset's ratio)")


def bench_config(args, gpu: bool):
    """The run config of a bench (--preset, else tiny on a CPU and the paper model at --width on a GPU) at
    its final densities; fills in args.preset_label, batch_size, seq_len and embed_ratio_used."""
    if args.preset or not gpu:
        cfg = get_preset(args.preset or "tiny")
        args.preset_label = args.preset or "tiny"
    else:
        cfg = paper(width=args.width)
        args.preset_label = f"paper width {args.width:g}"
    if args.n_layer:
        cfg.model.n_layer = args.n_layer
    cfg.train = TrainConfig(**{**vars(cfg.train), "steps": 10_000})   # the anneal is over: final densities
    args.batch_size = args.batch_size or (64 if gpu else cfg.train.batch_size)
    args.seq_len = args.seq_len or (256 if gpu else cfg.train.seq_len)
    args.embed_ratio_used = args.embed_ratio or cfg.sparsity.final_embed_density / cfg.sparsity.weight_density
    return cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(ap)
    ap.add_argument("--densities", type=float, nargs="+", default=None)
    ap.add_argument("--engines", nargs="+", default=["paper", "ours", "ours-support"])
    ap.add_argument("--steps", type=int, default=None, help="steps per engine (loss reported after these)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dense-every", type=int, default=8)
    ap.add_argument("--candidates", type=float, default=0.5)
    ap.add_argument("--backend", default=None, help="SparseAdamW kernels backend")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default=None)
    args, dev = parse_run_args(ap, argv)
    gpu = dev.type == "cuda"
    cfg = bench_config(args, gpu)
    if args.quick:
        args.batch_size, args.seq_len = (16, 256) if gpu else (4, 64)
    args.steps = args.steps or (10 if gpu else 16) if not args.quick else 4
    args.warmup = min(args.warmup, args.steps - 1)
    # GPU order = priority (a capped run keeps the densities that finished)
    densities = args.densities or ((1 / 1024, 1 / 256, 1 / 64) if gpu else (1 / 64, 1 / 256, 1 / 1024))
    engines = list(dict.fromkeys(["paper"] + args.engines))
    for e in engines:
        if e != "paper" and e.partition("@")[0] not in ("ours", "ours-support"):
            ap.error(f"unknown engine {e!r}: use paper, ours, ours-support, or ours@METHOD / ours-support@METHOD")
    batches = markov_batches(cfg.model.vocab_size, args.batch_size, args.seq_len, args.steps, args.seed)
    env = env_header(dev)
    rows = []
    cmd = ["python", "bench/bench_train_step.py"] + (argv or sys.argv[1:])

    def save(done: bool):
        doc = dict(env=env, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   model=vars(cfg.model), complete=done, rows=rows)
        md = to_markdown(env, cfg, rows, args, cmd) + ("" if done else "\n(partial: the run did not finish)\n")
        if args.out:     # rewritten after every density, so a run cut short still leaves its numbers
            write_results(args.out, args.name or f"train_step_{dev.type}", doc, md)
        return md

    for d in densities:
        try:
            rows += run_density(cfg, d, engines, batches, dev, args)
        except Exception as e:   # e.g. out of memory at one size: record it and go on
            log.warning("density %s failed: %s: %s", _frac(d), type(e).__name__, e)
            rows.append(dict(density=d, engine="error", error=f"{type(e).__name__}: {str(e)[:200]}"))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        save(False)
    print(save(True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
