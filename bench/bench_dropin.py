"""The drop-in, measured: a Hugging Face GPT-2 trained at density 1/16 with torch.optim.AdamW, against the
same model trained dense, on the same batches.

Model: GPT-2 from a config (2 layers, n_embd 128, 4 heads, vocabulary 512, context 64; no download),
`sparsify(model, 1/16)` on its Conv1D projections (the lm_head is tied to the embedding and stays dense).
Data: a fixed random Markov chain over the vocabulary (each token has 4 equally likely successors, so the
best possible loss is ln 4 = 1.386). Reported: first and final training loss, the exact density of the
sparse weights after the last step (non-zeros / entries, and whether every layer holds exactly k), and the
median CPU step time of each (forward, backward, optimizer step; the two models' steps interleaved).
Writes OUT/<name>.json and .md.

  python bench/bench_dropin.py --out bench/results --name dropin_cpu
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_train_step import markov_batches  # noqa: E402
from common import env_header, write_results  # noqa: E402

from sparseformer.layers import sparse_tensors, sparsify  # noqa: E402

log = logging.getLogger("bench_dropin")


def build(args):
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=args.width, n_head=4, vocab_size=args.vocab,
                                  n_positions=args.seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def train(models: dict, batches, lr: float, warmup: int) -> dict:
    """Train every model on the same batches with torch.optim.AdamW, their steps interleaved (step i of
    each, then step i+1) so that machine load hits all alike; per model: losses, step times, exact k."""
    opts = {n: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1) for n, m in models.items()}
    out = {n: dict(losses=[], times=[], exact=True) for n in models}
    for i, (x, y) in enumerate(batches):
        for name, model in models.items():
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            r = out[name]
            if i >= warmup:
                r["times"].append(time.perf_counter() - t0)
            r["losses"].append(loss.item())
            r["exact"] = r["exact"] and all(int(torch.count_nonzero(t.param)) == t.k for t in sparse_tensors(model))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", type=float, default=1 / 16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="dropin_cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    batches = markov_batches(args.vocab, args.batch, args.seq, args.steps, seed=args.seed)
    dense = build(args)
    sparse = sparsify(copy.deepcopy(dense), args.density)
    models = {"dense": dense, f"sparse 1/{round(1 / args.density)}": sparse}
    rows = []
    for name, r in train(models, batches, args.lr, args.warmup).items():
        tensors = sparse_tensors(models[name])
        nnz = sum(int(torch.count_nonzero(t.param)) for t in tensors)
        numel = sum(t.param.numel() for t in tensors)
        rows.append(dict(model=name, first_loss=r["losses"][0], final_loss=statistics.mean(r["losses"][-10:]),
                         step_ms=statistics.median(r["times"]) * 1e3, sparse_layers=len(tensors),
                         density=nnz / numel if numel else 1.0, exact_k=r["exact"] if tensors else None))
        log.info("%s: loss %.3f -> %.3f, median step %.1f ms", name, rows[-1]["first_loss"], rows[-1]["final_loss"],
                 rows[-1]["step_ms"])
    base = rows[0]["step_ms"]
    for r in rows:
        r["vs_dense"] = base / r["step_ms"]
    cmd = "python bench/bench_dropin.py " + " ".join(argv if argv is not None else sys.argv[1:])
    notes = [f"command: `{cmd}`",
             f"GPT-2 from a config: 2 layers, n_embd {args.width}, vocabulary {args.vocab}, context {args.seq}; "
             f"{args.steps} steps of {args.batch} x {args.seq} tokens of a random Markov chain (best loss ln 4 = "
             f"1.386), torch.optim.AdamW lr {args.lr}; final_loss = mean of the last 10 steps; step_ms = median "
             f"after {args.warmup} steps; density = non-zeros / entries of the sparse layers' weights"]
    md = write_results(str(args.out / args.name), f"Drop-in: Hugging Face GPT-2 at density {args.density:g} "
                       f"with torch.optim.AdamW", env_header(torch.device("cpu")), rows,
                       ["model", "first_loss", "final_loss", "sparse_layers", "density", "exact_k", "step_ms",
                        "vs_dense"], notes)
    print(md)

if __name__ == "__main__":
    main()
