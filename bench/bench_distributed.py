"""Training on many processes, measured: tokens/s, per-rank memory and collectives of 1 process vs 2 ranks
of DDP and of FSDP2, and what stays bit-identical at 2 and 4 ranks.

Throughput (CPU, gloo): for each model (the tiny preset, and a wider one: d_model 512, d_mlp 2048), one
process with all the machine's threads, then 2 ranks of DDP and of FSDP2 with the threads split between
them, all at the final densities on the same global batches (a random Markov chain; the data does not
change the cost). Per run: tokens/s from the median step time of the timed steps, and per rank the bytes it
holds in parameters, gradients and optimizer state at the optimizer step (measured on the tensors it
holds), its peak resident memory (the process's, libraries included), and the collectives of one step:
the bytes each rank sends for DDP's gradient all-reduce and FSDP2's two parameter all-gathers (forward,
backward) and gradient reduce-scatter, from the sizes and the ring algorithms (2 (N-1)/N and (N-1)/N of
the whole tensors), and the top-k selection's calls as the optimizer records them
(ShardedSparseAdamW.last_comm: all-reduces, and the bytes this rank sent).

Exactness (CPU): DDP on N = 2 and 4 ranks against one process with --grad-accum N on the same global
batches, and FSDP2 on 2 ranks against DDP: whether weights, masks and Adam moments are bit-identical
after the steps, and else their largest difference.

GPU (when CUDA is available; what bench/gpu_check.sh runs): the paper-width 8 model (d_model 2048, 8
layers, 411M dense-shaped parameters, 64 x 256 tokens a step) under torchrun with --dist fsdp at world size
1: a smoke test of the whole FSDP2 path on NCCL, its step time and peak GPU memory, exact k after the steps.

  python bench/bench_distributed.py --out bench/results --name distributed_cpu
  python bench/bench_distributed.py --out $OUT --name bench_distributed        # on a GPU: the smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_spmm import write_results  # noqa: E402
from common import device_line, env_header, fmt, md_table  # noqa: E402

log = logging.getLogger("bench_distributed")
MB = 1 << 20            # the *_mb columns are MiB
MODELS = {   # name -> config overrides of the tiny preset
    "tiny": [],
    "wide": ["model.d_model=512", "model.n_head=32", "model.d_mlp=2048"],
}


# -- one rank ---------------------------------------------------------------------------------------------

def build_config(spec: dict):
    from sparseformer.config import apply_overrides, get_preset, paper
    cfg = paper(width=8.0) if spec["model"] == "paper-8x" else get_preset("tiny")
    cfg = apply_overrides(cfg, MODELS.get(spec["model"], []) + spec.get("overrides", []))
    cfg.train.batch_size, cfg.train.seq_len = spec["batch"], spec["seq"]
    return cfg


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def rank_main(spec: dict) -> None:
    """One rank (or the one process): build, train spec["steps"] steps, write what it measured."""
    from sparseformer.distributed import (ShardedSparseAdamW, full_state, gather_rows, init_context,
                                          micro_batches, wrap_model)
    from sparseformer.layers import sparse_tensors
    from sparseformer.model import GPT
    from sparseformer.sparsity.optimizer import SparseAdamW
    from sparseformer.sparsity.params import configure, param_groups, write_ks
    from sparseformer.train import train_step
    from bench_train_step import markov_batches
    torch.set_num_threads(spec["threads"])
    cuda = spec.get("device") == "cuda"
    ctx = init_context(spec["mode"], torch.device("cuda" if cuda else "cpu"))
    cfg = build_config(spec)
    tc = cfg.train
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = GPT(cfg.model)
    configure(model, cfg.sparsity)
    write_ks(model, tc.steps, tc.steps, cfg.sparsity)            # the final densities
    wrapped = wrap_model(model, ctx)
    groups = param_groups(model, weight_decay=tc.weight_decay)
    hyper = dict(lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    opt = ShardedSparseAdamW(groups, ctx, **hyper) if ctx.mode == "fsdp" else SparseAdamW(groups, **hyper)
    batches = markov_batches(cfg.model.vocab_size, tc.batch_size, tc.seq_len, spec["steps"], seed=1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    times, losses, comm = [], [], None
    deadline = time.perf_counter() + spec.get("max_seconds", 1e9)
    for i, (x, y) in enumerate(batches):
        ctx.barrier()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x, y = x.contiguous(), y.contiguous()
        loss, _ = train_step(wrapped, opt, micro_batches(x, y, ctx.rank, ctx.world_size, spec["accum"]), ctx,
                             autocast)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        comm = getattr(opt, "last_comm", None)
        if time.perf_counter() > deadline and i >= 1:
            break
    params = [p for p in model.parameters()]
    out = dict(rank=ctx.rank, world=ctx.world_size, mode=ctx.mode, step_s=times, losses=losses,
               param_bytes=sum(_local(p).nbytes for p in params),
               grad_bytes=sum(_local(p.grad).nbytes for p in params if p.grad is not None),
               optim_bytes=sum(v.nbytes for st in opt.state.values() for v in st.values()
                               if isinstance(v, torch.Tensor)),
               whole_param_bytes=sum(p.numel() * p.element_size() for p in params),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               comm=[list(c) for c in comm.calls] if comm is not None else None)
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / MB
    exact = True                                                 # every sparse tensor holds exactly k
    for t in sparse_tensors(model):
        whole = gather_rows(_local(t.param).detach(), t.param.shape[0], ctx) if ctx.mode == "fsdp" else t.param
        if t.k is not None and t.k < t.param.numel():
            exact &= int(torch.count_nonzero(whole)) == t.k
    out["exact_k"] = exact
    if spec.get("state_out"):
        tensors, states = full_state(wrapped, opt, ctx)
        if ctx.is_main:
            torch.save({"model": tensors, "optim": states, "losses": losses}, spec["state_out"])
    Path(spec["out"]).write_text(json.dumps(out))
    ctx.close()


# -- the orchestrator ---------------------------------------------------------------------------------------

def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, world: int, work: Path, tag: str, timeout_s: float) -> list[dict]:
    """Run rank_main in `world` processes (torchrun's variables; one process without them for "single")."""
    port, procs, outs = _port(), [], []
    for r in range(world):
        s = dict(spec, out=str(work / f"{tag}.rank{r}.json"))
        path = work / f"{tag}.rank{r}.spec.json"
        path.write_text(json.dumps(s))
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
        if spec["mode"] != "single":
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__, "--rank-spec", str(path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outs.append(work / f"{tag}.rank{r}.json")
    logs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{tag}: exit codes {[p.returncode for p in procs]}\n" + "\n".join(x[-2000:] for x in logs))
    return [json.loads(o.read_text()) for o in outs]


def _calls(comm: list | None) -> dict:
    """The top-k selection's collectives of one step: histogram passes (one all-reduce each, all tensors
    together) and their kB, the kB of its all-gathers (column protection, tie counts), all this rank sent."""
    if not comm:
        return {}
    hist = [b for kind, what, b in comm if what.startswith("histograms")]
    return {"select_passes": len(hist), "select_hist_kb": sum(hist) / 1e3,
            "select_gather_kb": sum(b for kind, _, b in comm if kind == "all_gather") / 1e3}


def throughput(args, work: Path) -> list[dict]:
    cores = args.threads or os.cpu_count() or 2
    rows = []
    for model in args.models:
        base = None
        for mode, world in (("single", 1), ("ddp", 2), ("fsdp", 2)):
            spec = dict(model=model, mode=mode, batch=args.batch, seq=args.seq, steps=args.warmup + args.steps,
                        accum=1, threads=max(1, cores // world))
            t0 = time.perf_counter()
            ranks = launch(spec, world, work, f"{model}-{mode}", args.timeout)
            log.info("%s %s: %.0f s", model, mode, time.perf_counter() - t0)
            step_s = statistics.median(max(r["step_s"][i] for r in ranks)
                                       for i in range(args.warmup, len(ranks[0]["step_s"])))
            r0 = ranks[0]
            row = dict(model=model, mode=mode, ranks=world, threads_per_rank=spec["threads"],
                       tokens_per_s=args.batch * args.seq / step_s, step_ms=step_s * 1e3,
                       params_mb=r0["param_bytes"] / MB, grads_mb=r0["grad_bytes"] / MB,
                       optim_mb=max(r["optim_bytes"] for r in ranks) / MB,
                       peak_rss_mb=max(r["peak_rss_mb"] for r in ranks), exact_k=all(r["exact_k"] for r in ranks),
                       final_loss=r0["losses"][-1])
            whole, share = r0["whole_param_bytes"], (world - 1) / world
            if mode == "ddp":        # ring all-reduce of every gradient: 2 (N-1)/N of it sent by each rank
                row["ring_mb_per_rank"] = 2 * share * whole / MB
            elif mode == "fsdp":     # all-gather for forward, again for backward, reduce-scatter: (N-1)/N each
                row["ring_mb_per_rank"] = 3 * share * whole / MB
                row.update(_calls(r0["comm"]))
            if base is None:
                base = row
            row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["optim_vs_single"] = row["optim_mb"] / base["optim_mb"]
            rows.append(row)
    return rows


def _compare(a: dict, b: dict) -> dict:
    wa, wb = a["model"], b["model"]
    diff = max(float((wa[n].float() - wb[n].float()).abs().max()) for n in wa)
    masks = all(torch.equal(wa[n] != 0, wb[n] != 0) for n in wa)
    moments = all(torch.equal(a["optim"][n][k], b["optim"][n][k]) for n in a["optim"] for k in ("exp_avg", "exp_avg_sq"))
    same = all(torch.equal(wa[n], wb[n]) for n in wa)
    loss = max(abs(x - y) / abs(y) for x, y in zip(a["losses"], b["losses"]))
    return dict(weights_identical=same, masks_identical=masks, moments_identical=moments, max_weight_diff=diff,
                max_loss_rel_diff=loss)


def exactness(args, work: Path) -> list[dict]:
    rows = []
    base = dict(model="tiny", batch=16, seq=64, steps=args.exact_steps, overrides=["model.n_layer=1"])
    ref = {}
    for world in (2, 4):
        single = dict(base, mode="single", accum=world, threads=1, state_out=str(work / f"single{world}.pt"))
        launch(single, 1, work, f"single{world}", args.timeout)
        ddp = dict(base, mode="ddp", accum=1, threads=1, state_out=str(work / f"ddp{world}.pt"))
        launch(ddp, world, work, f"ddp{world}", args.timeout)
        a, b = (torch.load(work / f"{n}.pt") for n in (f"ddp{world}", f"single{world}"))
        ref[world] = a
        rows.append(dict(compare=f"DDP {world} ranks vs 1 process --grad-accum {world}", **_compare(a, b)))
    fsdp = dict(base, mode="fsdp", accum=1, threads=1, state_out=str(work / "fsdp2.pt"))
    launch(fsdp, 2, work, "fsdp2", args.timeout)
    rows.append(dict(compare="FSDP2 2 ranks vs DDP 2 ranks", **_compare(torch.load(work / "fsdp2.pt"), ref[2])))
    return rows


def gpu_smoke(args, work: Path) -> list[dict]:
    """The paper-width 8 model on one GPU under torchrun with --dist fsdp (world size 1). torchrun and its
    rank run in their own process group, killed whole if they outlive --gpu-timeout (or this script)."""
    spec = dict(model=args.smoke_model, mode="fsdp", batch=args.gpu_batch, seq=args.gpu_seq, steps=args.gpu_steps,
                accum=1, threads=4, device=args.smoke_device, max_seconds=args.gpu_seconds,
                out=str(work / "gpu.rank0.json"))
    path = work / "gpu.spec.json"
    path.write_text(json.dumps(spec))
    row = dict(model="paper width 8 (d_model 2048, 8 layers)" if args.smoke_model == "paper-8x" else args.smoke_model,
               mode=f"fsdp, torchrun, 1 {'GPU' if args.smoke_device == 'cuda' else 'CPU process'}")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             __file__, "--rank-spec", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))       # gpu_check.sh's timeout: clean up below
    try:
        output = proc.communicate(timeout=args.gpu_timeout)[0]
    except subprocess.TimeoutExpired:
        output = f"timed out after {args.gpu_timeout:g} s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0 or not (work / "gpu.rank0.json").is_file():
        row["error"] = output.strip().splitlines()[-1][:300] if output.strip() else f"exit code {proc.returncode}"
        log.info("%s", output[-3000:])
        return [row]
    r = json.loads((work / "gpu.rank0.json").read_text())
    steps = r["step_s"][1:] or r["step_s"]
    row.update(steps=len(r["step_s"]), step_ms=statistics.median(steps) * 1e3,
               tokens_per_s=args.gpu_batch * args.gpu_seq / statistics.median(steps), params_mb=r["param_bytes"] / MB,
               grads_mb=r["grad_bytes"] / MB, optim_mb=r["optim_bytes"] / MB, peak_gpu_mb=r.get("peak_gpu_mb"),
               exact_k=r["exact_k"], final_loss=r["losses"][-1], **_calls(r["comm"]))
    return [row]


THROUGHPUT_COLS = ["model", "mode", "ranks", "threads_per_rank", "tokens_per_s", "speedup", "params_mb", "grads_mb",
                   "optim_mb", "optim_vs_single", "peak_rss_mb", "ring_mb_per_rank", "select_passes",
                   "select_hist_kb", "select_gather_kb", "exact_k"]
EXACT_COLS = ["compare", "weights_identical", "masks_identical", "moments_identical", "max_weight_diff",
              "max_loss_rel_diff"]
GPU_COLS = ["model", "mode", "steps", "step_ms", "tokens_per_s", "params_mb", "grads_mb", "optim_mb", "peak_gpu_mb",
            "select_passes", "select_hist_kb", "exact_k", "error"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="distributed")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--exact-steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: every core)")
    ap.add_argument("--skip-exactness", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="the CPU measurements even when CUDA is available")
    ap.add_argument("--smoke", action="store_true", help="the smoke test even without CUDA (with --smoke-device cpu)")
    ap.add_argument("--smoke-model", default="paper-8x", choices=["paper-8x", *MODELS])
    ap.add_argument("--smoke-device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--gpu-seq", type=int, default=256)
    ap.add_argument("--gpu-steps", type=int, default=6)
    ap.add_argument("--gpu-seconds", type=float, default=12.0, help="stop timing GPU steps after this")
    ap.add_argument("--gpu-timeout", type=float, default=40.0, help="give up the GPU smoke test after this")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--rank-spec", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.rank_spec is not None:
        rank_main(json.loads(args.rank_spec.read_text()))
        return 0
    gpu = (torch.cuda.is_available() and not args.cpu) or args.smoke
    env = env_header("cuda" if gpu and args.smoke_device == "cuda" else "cpu")
    cmd = "python bench/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if gpu:
            rows, exact = gpu_smoke(args, work), []
        else:
            rows = throughput(args, work)
            exact = [] if args.skip_exactness else exactness(args, work)
    md = [f"# Training on more processes ({'GPU smoke test' if gpu else 'CPU, gloo'})", "", device_line(env),
          f"- command: `{cmd}`", ""]
    md += [md_table(rows, GPU_COLS if gpu else THROUGHPUT_COLS), ""]
    if exact:
        md += ["## Exactness", "", md_table(exact, EXACT_COLS), ""]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out is not None:
        write_results(args.out, args.name, {"header": env, "command": cmd, "rows": rows, "exactness": exact}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
