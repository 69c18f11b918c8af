"""Which operations of a training step give different bytes at different CPU thread counts.

Every aten operation the step runs (forward, loss, backward, SparseAdamW with its projection) is caught by a
TorchDispatchMode and run again on copies of its inputs, once at 1 thread and `--repeats` times at each
thread count of `--threads`; an operation whose outputs (or mutated inputs) differ in any byte is listed
with how often it ran, its shapes and the largest difference. Because each operation is checked on the same
inputs, the list names every thread-dependent operation, not only the first one in the step.

The step is the trainer's (sparseformer.train's loss, SparseAdamW over sparseformer.sparsity param groups)
on the tiny preset at each weight density of `--densities` (1/8 is what the preset trains at; 1/64 and
1/1024 are where the CPU dispatcher picks sparse matmuls), after one untimed
step that projects the weights, on random tokens; `--methods csr` forces a sparse-matmul method instead of
the dispatcher's choice; `--lookup-reps N` also times the bigram-table lookup's forward + backward both
ways (indexing, thread-dependent, and the model's F.embedding). Writes OUT/<name>.json and .md.

  python bench/determinism_audit.py --threads 2 3 4 --methods auto csr --lookup-reps 21 \
      --out bench/results/determinism --name audit_after
"""

from __future__ import annotations

import argparse
import os
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
from common import device_line, env_header  # noqa: E402

from sparseformer.config import SparsityConfig, get_preset  # noqa: E402
from sparseformer.determinism import ThreadAudit  # noqa: E402
from sparseformer.model import GPT  # noqa: E402
from sparseformer.sparsity.optimizer import SparseAdamW  # noqa: E402
from sparseformer.sparsity.params import configure, param_groups, write_ks  # noqa: E402
from sparseformer.train import _lm_loss  # noqa: E402


def audit(density: float, method: str, threads: list[int], repeats: int, batch: int, seq: int, seed: int) -> dict:
    """Audit one training step at this weight density; `method` "auto" (the dispatcher's choice) or a forced
    sparse-matmul method."""
    if method == "auto":
        os.environ.pop("SPARSEFORMER_SPMM_METHOD", None)
    else:
        os.environ["SPARSEFORMER_SPMM_METHOD"] = method
    cfg = get_preset("tiny")
    cfg.sparsity = SparsityConfig(weight_density=density, embed_density=min(1.0, 2 * density),
                                  protect_per_neuron=cfg.sparsity.protect_per_neuron if density >= 1 / 16 else 0,
                                  anneal_start=0.0, anneal_end=0.0)
    cfg.train.steps = 10
    torch.manual_seed(seed)
    model = GPT(cfg.model)
    configure(model, cfg.sparsity)
    write_ks(model, 0, cfg.train.steps, cfg.sparsity)     # anneal over: the layers hold the final k
    opt = SparseAdamW(param_groups(model, weight_decay=cfg.train.weight_decay), lr=cfg.train.lr,
                      betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps)
    gen = torch.Generator().manual_seed(seed)
    vocab = cfg.model.vocab_size
    batches = [(torch.randint(vocab, (batch, seq), generator=gen), torch.randint(vocab, (batch, seq), generator=gen))
               for _ in range(2)]

    def step(x, y):
        loss = _lm_loss(model, x, y, nullcontext())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(*batches[0])                    # projects every sparse tensor to its k
    mode = ThreadAudit(threads, repeats)
    with mode:
        step(*batches[1])
    from sparseformer.layers import SparseLinear
    methods = sorted({m.plan(torch.empty(1, m.in_features)).fwd for m in model.modules()
                      if isinstance(m, SparseLinear)})
    bad = sorted(mode.mismatches.values(), key=lambda r: r["op"])
    for r in bad:
        r["threads"] = sorted(r["threads"])
    os.environ.pop("SPARSEFORMER_SPMM_METHOD", None)
    return dict(density=density, method=method, ops=len(mode.calls), calls=sum(mode.calls.values()), matmul_methods=methods,
                thread_dependent=bad)


def lookup_cost(threads: list[int], batch: int, seq: int, vocab: int, reps: int) -> list[dict]:
    """Forward + backward of the bigram-table lookup, by indexing (table[idx], thread-dependent gradient)
    and by F.embedding (the model's), interleaved; median ms at each thread count."""
    gen = torch.Generator().manual_seed(0)
    table = torch.rand(vocab, vocab, generator=gen).requires_grad_()
    idx = torch.randint(vocab, (batch, seq), generator=gen)
    grad = torch.randn(batch, seq, vocab, generator=gen)
    ways = {"indexing": lambda: table[idx], "embedding": lambda: F.embedding(idx, table)}
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        times = {w: [] for w in ways}
        for _ in range(reps):
            for w, fn in ways.items():
                table.grad = None
                t0 = time.perf_counter()
                fn().backward(grad)
                times[w].append((time.perf_counter() - t0) * 1e3)
        rows += [dict(threads=n, lookup=w, median_ms=statistics.median(t[1:])) for w, t in times.items()]
    return rows


def to_markdown(env, results, args, argv) -> str:
    lines = ["# Thread-count audit of one training step (CPU)", "", device_line(env),
             f"- tiny preset, batch {args.batch_size} x {args.seq_len} tokens; each op rerun on copies of its "
             f"inputs at 1 thread and {args.repeats}x at {args.threads} threads",
             f"- command: `{' '.join(argv)}`", ""]
    if args.lookup:
        lines += [f"## Cost of the deterministic bigram-table lookup ({args.batch_size} x {args.seq_len} tokens, "
                  f"2048 x 2048 table, forward + backward, median of {args.lookup_reps - 1} interleaved runs)", "",
                  "| threads | indexing `table[idx]` ms | `F.embedding` ms |", "|---|---|---|"]
        by = {(r["threads"], r["lookup"]): r["median_ms"] for r in args.lookup}
        for n in sorted({r["threads"] for r in args.lookup}):
            lines.append(f"| {n} | {by[n, 'indexing']:.2f} | {by[n, 'embedding']:.2f} |")
        lines.append("")
    for r in results:
        how = "dispatcher's choice" if r["method"] == "auto" else "forced"
        lines += [f"## weight density {_frac(r['density'])}, matmul {', '.join(r['matmul_methods'])} ({how})", "",
                  f"{r['calls']} op calls of {r['ops']} distinct ops; thread-dependent: "
                  f"{len(r['thread_dependent']) or 'none'}", ""]
        if r["thread_dependent"]:
            lines += ["| op | mismatching reruns | at threads | max abs diff | input shapes (first call) |",
                      "|---|---|---|---|---|"]
            for b in r["thread_dependent"]:
                lines.append(f"| `{b['op']}` | {b['reruns']} | {b['threads']} | {b['max_abs_diff']:.3g} | "
                             f"{b['shapes'][:3]} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--densities", type=float, nargs="+", default=[1 / 8, 1 / 64, 1 / 1024])
    ap.add_argument("--methods", nargs="+", default=["auto"],
                    help="'auto' (the dispatcher's choice) and/or sparse-matmul methods to force, e.g. csr")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lookup-reps", type=int, default=0,
                    help="also time the bigram-table lookup both ways, this many runs at 1 and each --threads")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="determinism_audit_cpu")
    args = ap.parse_args(argv)
    env = env_header(torch.device("cpu"))
    args.lookup = (lookup_cost([1] + args.threads, args.batch_size, args.seq_len, 2048, args.lookup_reps)
                   if args.lookup_reps > 1 else [])
    results = [audit(d, m, args.threads, args.repeats, args.batch_size, args.seq_len, args.seed)
               for m in args.methods for d in args.densities]
    cmd = ["python", "bench/determinism_audit.py"] + (argv or sys.argv[1:])
    md = to_markdown(env, results, args, cmd)
    if args.out:
        write_results(args.out, args.name, dict(env=env, args={k: str(v) for k, v in vars(args).items()},
                                                lookup=args.lookup, results=results), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
