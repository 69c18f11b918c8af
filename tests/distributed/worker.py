"""One rank of the distributed tests (started by dist_launch.launch_worker with torchrun's variables).

It starts the gloo process group itself, as a user of the Python API would (train() then uses that group),
and runs the jobs of the JSON file given as its argument, in order, on every rank:
- {"kind": "train", "config": RunConfig dict, "out", "dist", "grad_accum", "resume", "max_steps",
   "faults": {rank: SPARSEFORMER_FAULT}}: sparseformer.train.train;
- {"kind": "copy", "src", "dst"}: rank 0 copies a run directory (then every rank waits for it);
- {"kind": "fsdp_check", "out", "steps"}: a short FSDP2 run whose every step is checked against the
   single-process projection of the gathered pre-projection weights (see fsdp_check);
- {"kind": "selection", "out", "cases"}: the projection across ranks on constructed tensors.
Results of the checks are written to files under "out" (rank 0) for the test to assert on.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def run_train(job: dict) -> None:
    from sparseformer.config import RunConfig
    from sparseformer.train import train
    fault = job.get("faults", {}).get(str(dist.get_rank()))
    if fault:
        os.environ["SPARSEFORMER_FAULT"] = fault
    try:
        train(RunConfig.from_dict(job["config"]), job["out"], resume=job.get("resume", False), progress=False,
              max_steps=job.get("max_steps"), dist=job.get("dist"), grad_accum=job.get("grad_accum", 1))
    finally:
        os.environ.pop("SPARSEFORMER_FAULT", None)


def run_copy(job: dict) -> None:
    if dist.get_rank() == 0:
        shutil.copytree(job["src"], job["dst"])
    dist.barrier()


# -- FSDP2: every step's kept set against the single-process projection ------------------------------------

def _reference_mask(w: torch.Tensor, k: int, protect) -> torch.Tensor:
    from sparseformer.kernels.topk.reference import topk_mask_ref
    if protect and protect[1] == "cols":
        return topk_mask_ref(w.t(), k, protect[0]).t()
    return topk_mask_ref(w, k, protect[0] if protect else None)


class PreProjectionProbe:
    """A Comm that gathers every parameter at the projection's first collective of a step: after the Adam
    update of all tensors, before anything is projected (kernels/topk/phases.py `run`)."""

    def __init__(self, comm, model, ctx):
        from sparseformer.kernels.topk import Comm
        self.model, self.ctx, self.inner = model, ctx, comm
        self.pre: dict[str, torch.Tensor] | None = None
        self.comm = Comm(comm.rank, comm.world_size, self._wrap(comm.all_reduce), self._wrap(comm.all_gather))

    def _wrap(self, fn):
        def call(t):
            if self.pre is None:
                from sparseformer.distributed import gather_rows
                self.pre = {n: gather_rows(p.to_local().detach(), p.shape[0], self.ctx).clone()
                            for n, p in self.model.named_parameters()}
            return fn(t)
        return call


def run_fsdp_check(job: dict) -> None:
    """FSDP2 over a GPT whose tensors have odd first dimensions (vocabulary 301, d_model 21, d_mlp 45),
    column-protected c_proj weights, and weights rounded to multiples of 1/64 so that many magnitudes tie
    (rows of tokens absent from a batch keep their tied values): at every step, the kept set of every
    projected tensor equals what the single-process reference keeps on the gathered pre-projection weights."""
    from sparseformer.config import ModelConfig, SparsityConfig
    from sparseformer.distributed import ShardedSparseAdamW, gather_rows, init_context, micro_batches, wrap_model
    from sparseformer.layers.owner import budget_of
    from sparseformer.model import GPT
    from sparseformer.sparsity.params import configure, param_groups, write_ks
    from sparseformer.train import train_step
    torch.manual_seed(0)
    mcfg = ModelConfig(vocab_size=301, n_layer=1, d_model=21, n_head=3, d_head=7, d_mlp=45, block_size=16,
                       afrac=0.5, learned_pos_emb=True)
    scfg = SparsityConfig(weight_density=0.25, embed_density=0.25, protect_per_neuron=1, anneal_start=0.0,
                          anneal_end=0.3)
    model = GPT(mcfg)
    configure(model, scfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 64) / 64)
    ctx = init_context("fsdp", torch.device("cpu"))
    wrap_model(model, ctx)
    opt = ShardedSparseAdamW(param_groups(model, weight_decay=0.1), ctx, lr=1e-2, betas=(0.9, 0.95), eps=0.1)
    probe = PreProjectionProbe(opt.comm, model, ctx)
    opt.comm = probe.comm
    steps, report = job["steps"], []
    for step in range(steps):
        write_ks(model, step, steps, scfg)
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, mcfg.vocab_size, (4, 16), generator=g)
        y = torch.randint(0, mcfg.vocab_size, (4, 16), generator=g)
        probe.pre = None
        train_step(model, opt, micro_batches(x, y, ctx.rank, ctx.world_size, 1), ctx, torch.autocast("cpu", enabled=False))
        calls = [list(c) for c in opt.last_comm.calls]
        for name, p in model.named_parameters():
            k, protect = budget_of(p)
            if k is None or k >= p.numel():
                continue
            assert probe.pre is not None, f"step {step}: {name} has k < numel but nothing was gathered"
            post = gather_rows(p.to_local().detach(), p.shape[0], ctx)
            pre = probe.pre[name]
            want = _reference_mask(pre, k, protect) & (pre != 0)
            report.append({"step": step, "name": name, "shape": list(p.shape), "k": k, "protect": protect,
                           "equal": bool(torch.equal(post != 0, want)), "nonzero": int((post != 0).sum()),
                           "tied_at_threshold": _ties_at_threshold(pre, k, protect), "calls": calls})
    if ctx.is_main:
        Path(job["out"]).write_text(json.dumps(report))


def _ties_at_threshold(w: torch.Tensor, k: int, protect) -> list[int]:
    """How many entries on each side of the 2-rank shard boundary share the k-th largest magnitude."""
    tau = w.abs().flatten().kthvalue(w.numel() - k + 1).values
    half = -(-w.shape[0] // 2)
    tied = w.abs() == tau
    return [int(tied[:half].sum()), int(tied[half:].sum())]


# -- the projection across ranks on constructed tensors ------------------------------------------------------

def _cases(n: int) -> list[tuple[torch.Tensor, int, tuple | None]]:
    """Whole tensors, each with its k and protection: ties that straddle the shard boundary, all-equal
    magnitudes, +-0, column and row protection, first dimensions 1, 3, 5 and 7."""
    g = torch.Generator().manual_seed(1234)
    cases = [(torch.ones(5, 4), 7, None),                                   # 20 ties, cut inside rank 0's rows
             (torch.ones(5, 4), 13, None),                                  # ... inside rank 1's rows
             (torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, 1.0]]), 3, None),  # ties on both sides of the cut
             (torch.zeros(3, 4), 5, None),                                  # +0 everywhere
             (torch.tensor([[0.0, -0.0, 0.0]]), 2, None),                   # one row: rank 1 holds nothing
             (torch.ones(7, 6), 9, (1, "cols")),                           # ties under column protection
             (torch.ones(7, 6), 10, (2, "rows"))]
    for _ in range(n):
        rows, cols = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        w = torch.randint(-3, 4, (rows, cols), generator=g).float() / 2    # few distinct values: many ties
        k = int(torch.randint(0, rows * cols + 1, (1,), generator=g))
        rule = [None, (1, "rows"), (1, "cols"), (2, "cols")][int(torch.randint(0, 4, (1,), generator=g))]
        if rule is not None and rule[0] * (rows if rule[1] == "rows" else cols) > k:
            rule = None
        cases.append((w, k, rule))
    return cases


def run_selection(job: dict) -> None:
    """project_topk_sharded_ through the Comm made from torch.distributed, on each rank's FSDP2 row block
    of constructed tensors; the gathered result must equal the single-process projection."""
    from sparseformer.distributed import gather_rows, init_context, make_comm
    from sparseformer.kernels.topk import project_topk_sharded_
    ctx = init_context("fsdp", torch.device("cpu"))
    comm = make_comm(ctx)
    cases = _cases(job["cases"])
    shards, offsets = [], []
    for w, _, _ in cases:
        chunk = -(-w.shape[0] // ctx.world_size)
        first = min(ctx.rank * chunk, w.shape[0])
        shards.append(w[first:first + chunk].clone())
        offsets.append(first)
    stats = project_topk_sharded_(shards, [k for _, k, _ in cases], [w.shape for w, _, _ in cases], offsets, comm,
                                  protect=[r for _, _, r in cases])
    results = []
    for (w, k, rule), shard in zip(cases, shards):
        whole = gather_rows(shard, w.shape[0], ctx)
        want = w * _reference_mask(w, k, rule)
        results.append({"shape": list(w.shape), "k": k, "protect": rule, "equal": bool(torch.equal(whole, want))})
    if ctx.is_main:
        Path(job["out"]).write_text(json.dumps({"results": results, "calls": stats.calls}))


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())["jobs"]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for job in jobs:
            {"train": run_train, "copy": run_copy, "fsdp_check": run_fsdp_check,
             "selection": run_selection}[job["kind"]](job)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
