"""The training loop: data -> model -> loss -> backward -> SparseAdamW (normalise, Adam, project, decay).

`train(cfg, out)` creates or resumes a run directory (see checkpoint.py), in a single process or as one rank
of many started by torchrun (DDP or FSDP2; sparseformer.distributed, docs/distributed.md). Batches are a pure
function of (seed, step), the model has no randomness in its forward pass, every operation of the step gives
the same bytes at any CPU thread count, and the optimizer state is saved with the weights, so a run is
reproducible to the bit on the same machine and a resumed run ends bit-identical to an uninterrupted one
(docs/reproducibility.md). One optimizer step is one `train_step` over the step's micro-batches
(--grad-accum), whatever the number of ranks.

A `TrainObjective` (the `objective` argument) changes what the loop minimises without a second loop: bridge
training (sparseformer.bridges, docs/bridges.md) passes one that adds its loss terms and trains its bridges
alongside the model, with the same data, optimizer, schedules, checkpoints and resume (in one process).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import faults
from .config import RunConfig
from .data.for_config import load_dataset
from .determinism import deterministic_mode
from .distributed import (DistContext, PeerLost, ShardedSparseAdamW, check_batch, full_state, gradient_sync,
                          init_context, micro_batches, planned_world_size, wrap_model)
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .layers.support_dw import support_layers
from .model import GPT
from .sparsity.optimizer import SparseAdamW
from .sparsity.params import check_protection, configure, param_groups, write_ks
from .sparsity.schedule import embed_density, learning_rate, weight_density
from .sparsity.support_dw import begin_step, configure_dw, dw_state, load_dw_state

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None
    val_loss: float | None
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)


class TrainObjective(Protocol):
    """What a loop with another loss supplies. `modules` are trained with the model by the same optimizer and
    saved as NAME.safetensors in every checkpoint set (their Adam moments as NAME.* in optim.safetensors)."""

    modules: dict[str, torch.nn.Module]

    def run_files(self) -> dict[str, str]:
        """Files (name -> text) written into a new run directory next to config.json."""

    def loss(self, model: GPT, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """The loss to minimise on batch (x, y) of 0-based `step`, and the scalars to log with it."""

    def evaluate(self, model: GPT, dataset, cfg: RunConfig, device: torch.device) -> dict:
        """Entries added to the metrics rows that measure val_loss."""


def _prepare_out(cfg: RunConfig, out: Path, resume: bool, force: bool,
                 run_files: dict[str, str] | None = None) -> RunConfig:
    """Create the run directory, or check it may be reused; returns the config to train with."""
    has_run = (out / ckpt.CONFIG_FILE).is_file()
    if resume:
        if not has_run:
            raise CheckpointError(f"--resume: {out} holds no run to resume (no {ckpt.CONFIG_FILE}); "
                                  f"drop --resume to start one")
        return ckpt.load_config(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output path {out} exists and is not a directory")
    if has_run or (out.exists() and any((out / f).exists() for f in ckpt.RUN_FILES + (ckpt.CHECKPOINTS_DIR,))):
        if not force:
            raise CheckpointError(f"{out} already holds a run; pass --resume to continue it or --force to "
                                  f"replace it")
        ckpt.remove_run(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_config(out, cfg)
    for name, text in (run_files or {}).items():
        ckpt.atomic_write_text(out / name, text)
    return cfg


def _lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    with autocast:
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def evaluate_val(model: GPT, dataset, cfg: RunConfig, device: torch.device, autocast,
                 ctx: DistContext | None = None, grad_accum: int = 1) -> float:
    """Mean next-token loss over the fixed validation batches; across ranks (`ctx`) each rank scores its
    micro-batches of every batch (as in training) and the mean is over all of them."""
    was_training = model.training
    model.eval()
    total, pieces = 0.0, 0
    for x, y in dataset.val_batches(cfg.train.batch_size, cfg.train.seq_len, cfg.train.eval_batches):
        parts = [(x, y)] if ctx is None else micro_batches(x, y, ctx.rank, ctx.world_size, grad_accum)
        for xm, ym in parts:
            total += float(_lm_loss(model, xm.to(device), ym.to(device), autocast))
            pieces += 1
        faults.point("val")
    model.train(was_training)
    if ctx is not None:
        total, pieces = ctx.all_sum([total, float(pieces)])
    return total / max(1, pieces)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro: list, ctx: DistContext,
               autocast, stop_requested=lambda: False, loss_fn=None) -> tuple[float, bool]:
    """One optimizer step over this rank's micro-batches `micro` [(x, y), ...], minimising
    `loss_fn(model, x, y)` (default: the next-token loss).

    Each micro-batch's loss is divided by their number before its backward, so the accumulated gradient is
    the mean over the step's micro-batches (and over ranks, which DDP and FSDP2 average). Returns the
    step's mean loss over all ranks and whether any rank asked to stop (`stop_requested()` on some rank
    after its backward; one all-reduce carries both). A loss that is not finite skips the update (the
    caller raises)."""
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for i, (x, y) in enumerate(micro):
        with gradient_sync(model, ctx, sync=i == len(micro) - 1):
            x, y = x.to(ctx.device), y.to(ctx.device)
            loss = _lm_loss(model, x, y, autocast) if loss_fn is None else loss_fn(model, x, y)
            (loss / len(micro)).backward()
        loss_sum += float(loss.detach())
    faults.point("step")
    loss_sum, stops = ctx.all_sum([loss_sum, float(stop_requested())])
    loss_value = loss_sum / (len(micro) * ctx.world_size)
    if math.isfinite(loss_value):
        optimizer.step()
    return loss_value, stops > 0


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
          progress: bool = True, max_steps: int | None = None, dist: str | None = None, grad_accum: int = 1,
          dist_backend: str | None = None, tokenizer=None, objective: TrainObjective | None = None) -> TrainResult:
    """Train (or resume) the run in `out`. `max_steps` stops early after that many steps of this call
    (the schedule still spans cfg.train.steps); it exists for tests of interruption and resume. A new run
    fits a tokenizer to the corpus unless `tokenizer` is given; `objective` replaces the next-token loss.

    `dist`: "ddp" or "fsdp" when this process is one rank of many started by torchrun (there the default is
    "ddp"; elsewhere a single process). `grad_accum`: micro-batches per rank and step; the global batch
    (train.batch_size) is the same whatever the ranks and grad_accum, and must divide by their product.
    `dist_backend`: "nccl" or "gloo" (default: NCCL on CUDA, gloo on the CPU). docs/distributed.md."""
    out = Path(out)
    cfg = cfg.validate()
    planned = ckpt.load_config(out) if resume and (out / ckpt.CONFIG_FILE).is_file() else cfg
    if objective is not None and planned_world_size(dist) > 1:
        # its modules are neither wrapped nor sharded, so their gradients would not be averaged across ranks
        raise ConfigError("a training objective with extra modules (bridge training) runs in one process")
    check_batch(planned.train.batch_size, planned_world_size(dist), grad_accum)
    ctx = init_context(dist, ckpt.resolve_device(planned.train.device), dist_backend)
    try:
        run_files = objective.run_files() if objective is not None else None
        cfg = ctx.on_main(lambda: _prepare_out(cfg, out, resume, force, run_files))
        with deterministic_mode(cfg.train.deterministic):
            result = _train(cfg, out, resume, progress, max_steps, ctx, grad_accum, tokenizer, objective)
        ctx.barrier()        # no rank tears the group down while another still talks to it
        return result
    finally:
        ctx.close()


def _build(cfg: RunConfig, out: Path, start: int, ctx: DistContext, extra: dict[str, torch.nn.Module]):
    """The model (loaded from the checkpoint at `start` > 0), its DDP/FSDP2 wrapper, and the optimizer (of
    the model and of the `extra` modules trained with it, loaded too)."""
    tc, sc = cfg.train, cfg.sparsity
    model = GPT(cfg.model)
    check_protection(configure(model, sc), sc)        # the layers hold k from here on
    configure_dw(model, sc)                           # ... and their dW policy (docs/support-dw.md)
    if start > 0:
        ckpt.load_model_weights(out, model, expect_step=start)
    model.to(ctx.device).train()
    wrapped = wrap_model(model, ctx)                  # FSDP2 shards `model` in place: optimizer after this
    if start > 0:
        ckpt.load_module_weights(out, extra, expect_step=start)
    for module in extra.values():
        module.to(ctx.device).train()
    groups = param_groups(model, weight_decay=tc.weight_decay)
    for module in extra.values():
        groups += param_groups(module, weight_decay=tc.weight_decay)
    hyper = dict(lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps, grad_rms_norm=tc.grad_rms_norm, backend=tc.backend,
                 dw_moments=sc.dw_moments, dw_rms=sc.dw_rms)
    optimizer = ShardedSparseAdamW(groups, ctx, **hyper) if ctx.mode == "fsdp" else SparseAdamW(groups, **hyper)
    if start > 0:
        place = ShardedSparseAdamW.place_state if ctx.mode == "fsdp" else None
        load_dw_state(model, ckpt.load_optimizer_state(out, model, optimizer, start, place=place, modules=extra))
    return model, wrapped, optimizer


def _save(out: Path, ctx: DistContext, model, optimizer, step: int, ks: dict[str, int], finished: bool,
          extra: dict[str, torch.nn.Module]) -> None:
    """One checkpoint set of the whole model (and of the `extra` modules of a single-process run), written by
    rank 0 (every rank takes part in gathering it)."""
    tensors, states = full_state(model, optimizer, ctx)
    for prefix, module in extra.items():
        states.update({f"{prefix}.{n}": dict(optimizer.state[p]) for n, p in module.named_parameters()
                       if optimizer.state.get(p)})
    modules = {name: m.state_dict() for name, m in extra.items()}

    def write() -> None:
        optim_tensors, optim_meta = ckpt.optimizer_tensors(states)
        optim_tensors.update(dw_state(model))         # support-dW tracked sets: the same on every rank
        ckpt.write_checkpoint(out, step, tensors, {"ks": ks, "finished": finished}, optim_tensors, optim_meta,
                              modules)
    ctx.on_main(write)


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool, max_steps: int | None, ctx: DistContext,
           grad_accum: int, tokenizer, objective: TrainObjective | None) -> TrainResult:
    tc, sc = cfg.train, cfg.sparsity
    check_batch(tc.batch_size, ctx.world_size, grad_accum)
    torch.manual_seed(tc.seed)

    tokenizer = ckpt.load_tokenizer(out) if resume else tokenizer
    dataset = ctx.main_first(lambda: load_dataset(cfg, tokenizer))
    if tokenizer is None or not resume:
        ctx.on_main(lambda: dataset.tokenizer.save(out / ckpt.TOKENIZER_FILE))

    state = ckpt.read_state(out) if resume else {"step": 0, "finished": False}
    start = int(state["step"])
    extra = dict(objective.modules) if objective is not None else {}
    model, wrapped, optimizer = _build(cfg, out, start, ctx, extra)
    support = bool(support_layers(model))
    if resume:
        ctx.on_main(lambda: ckpt.truncate_metrics(out, start))
    device = ctx.device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())

    total = tc.steps
    end = total if max_steps is None else min(total, start + max_steps)
    ks = write_ks(model, max(0, start - 1), total, sc) if start > 0 else {}
    bar = _progress_bar(progress and ctx.is_main, start, total)
    history: list[dict] = []
    last_loss = val_loss = None
    last_good = start
    t0, tokens_since = time.perf_counter(), 0
    stop = _StopFlag(echo_s=LAUNCHER_ECHO_S if ctx.launched else 0.0, announce=ctx.is_main)
    agreed = False

    def stopping() -> bool:
        """Ranks stop after the step whose all-reduce carried a request (so all after the same step); one
        process heeds a Ctrl-C at once (during its optimizer step, validation or a checkpoint write)."""
        return agreed if ctx.distributed else stop.requested

    terms: dict = {}            # the objective's scalars of this step (its last micro-batch)

    def objective_loss(m, xm, ym):
        with autocast:
            loss, scalars = objective.loss(m, xm, ym, step)
        terms.update(scalars)
        return loss

    loss_fn = objective_loss if objective is not None else None
    step = start
    try:
        for step in range(start, end):
            lr = learning_rate(step, tc, sc)
            ks = write_ks(model, step, total, sc)            # the schedule writes k into the layers
            for group in optimizer.param_groups:
                group["lr"] = lr
            begin_step(model, step)            # support dW: is this step a refresh (dense dW on its backward)
            x, y = dataset.get_batch("train", tc.batch_size, tc.seq_len, step, tc.seed)
            micro = micro_batches(x, y, ctx.rank, ctx.world_size, grad_accum)
            terms.clear()
            loss_value, agreed = train_step(wrapped, optimizer, micro, ctx, autocast, lambda: stop.requested,
                                            loss_fn=loss_fn)
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at step {step + 1}; the last good checkpoint "
                                       f"(step {last_good}) is kept in {out}; lower train.lr and --resume or "
                                       f"retrain with --force")
            last_loss = loss_value
            tokens_since += x.numel()
            done = step + 1
            measure_val = done % tc.eval_every == 0 or done == total
            if measure_val:
                val_loss = evaluate_val(wrapped, dataset, cfg, device, autocast, ctx, grad_accum)
            if done % tc.log_every == 0 or measure_val or done == end:
                dt = time.perf_counter() - t0
                row = dict(step=done, tokens=done * tc.batch_size * tc.seq_len, loss=round(loss_value, 5),
                           lr=lr, density=round(weight_density(step, total, sc), 6),
                           embed_density=round(embed_density(step, total, sc), 6),
                           tokens_per_s=round(tokens_since / dt, 1) if dt > 0 else None)
                if measure_val:
                    row["val_loss"] = round(val_loss, 5)
                if support:
                    row.update(optimizer.dw_stats.row())
                row.update(terms)
                if measure_val and objective is not None:
                    row.update(objective.evaluate(model, dataset, cfg, device))
                ctx.on_main(lambda: ckpt.append_metrics(out, row))
                history.append(row)
                t0, tokens_since = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.3f}", density=f"{row['density']:.3g}", lr=f"{lr:.2e}",
                                    tok_s=f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] else "-")
            if done % tc.ckpt_every == 0 or done == total or done == end or stopping():
                _save(out, ctx, wrapped, optimizer, done, ks, finished=(done == total), extra=extra)
                last_good = done
            if bar is not None:
                bar.update(1)
            if stopping() and last_good == done:    # (one between the two checks stops after the next step)
                if ctx.is_main:
                    log.warning("interrupted: checkpoint at step %d saved in %s; continue with --resume",
                                last_good, out)
                break
    except (PeerLost, RuntimeError) as e:
        lost = ctx.lost_contact(e)
        if lost is None:
            raise
        raise PeerLost(f"{lost} during step {step + 1}; the last checkpoint (step {last_good}) is in {out}: "
                       f"relaunch with --resume") from e
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    return TrainResult(run_dir=out, step=last_good, final_loss=last_loss, val_loss=val_loss,
                       interrupted=stopping() and last_good < total, history=history)


LAUNCHER_ECHO_S = 2.0   # torchrun forwards the signal it receives: in a terminal a rank sees Ctrl-C twice


class _StopFlag:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to finish the current step, checkpoint and stop;
    a second one aborts. A repeat within `echo_s` seconds of the first counts as the same request."""

    def __init__(self, echo_s: float = 0.0, announce: bool = True):
        self.requested = False
        self.echo_s, self.announce = echo_s, announce
        self._first = 0.0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if now - self._first < self.echo_s:
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, now
        if self.announce:
            log.warning("%s: finishing this step and saving a checkpoint (press Ctrl-C again to abort)",
                        signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
