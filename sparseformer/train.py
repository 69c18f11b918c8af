"""The training loop: data -> model -> loss -> backward -> SparseAdamW (normalise, Adam, project, decay).

`train(cfg, out)` creates or resumes a run directory (see checkpoint.py). Batches are a pure function of
(seed, step), the model has no randomness in its forward pass, every operation of the step gives the same
bytes at any CPU thread count, and the optimizer state is saved with the weights, so a run is reproducible to
the bit on the same machine and a resumed run ends bit-identical to an uninterrupted one
(docs/reproducibility.md).
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

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import faults
from .config import RunConfig
from .data.for_config import load_dataset
from .determinism import deterministic_mode
from .errors import CheckpointError, TrainingDiverged
from .model import GPT
from .sparsity.optimizer import SparseAdamW
from .sparsity.params import check_protection, configure, param_groups, write_ks
from .sparsity.schedule import embed_density, learning_rate, weight_density

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None
    val_loss: float | None
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)


def _prepare_out(cfg: RunConfig, out: Path, resume: bool, force: bool) -> RunConfig:
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
    return cfg


def _lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    with autocast:
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


@torch.no_grad()
def evaluate_val(model: GPT, dataset, cfg: RunConfig, device: torch.device, autocast) -> float:
    """Mean next-token loss over the fixed validation batches."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in dataset.val_batches(cfg.train.batch_size, cfg.train.seq_len, cfg.train.eval_batches):
        losses.append(float(_lm_loss(model, x.to(device), y.to(device), autocast)))
        faults.point("val")
    model.train(was_training)
    return sum(losses) / max(1, len(losses))


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, force: bool = False,
          progress: bool = True, max_steps: int | None = None) -> TrainResult:
    """Train (or resume) the run in `out`. `max_steps` stops early after that many steps of this call
    (the schedule still spans cfg.train.steps); it exists for tests of interruption and resume."""
    out = Path(out)
    cfg = _prepare_out(cfg.validate(), out, resume, force)
    with deterministic_mode(cfg.train.deterministic):
        return _train(cfg, out, resume, progress, max_steps)


def _train(cfg: RunConfig, out: Path, resume: bool, progress: bool, max_steps: int | None) -> TrainResult:
    tc, sc = cfg.train, cfg.sparsity
    device = ckpt.resolve_device(tc.device)
    torch.manual_seed(tc.seed)

    tokenizer = ckpt.load_tokenizer(out) if resume else None
    dataset = load_dataset(cfg, tokenizer)
    if tokenizer is None:
        dataset.tokenizer.save(out / ckpt.TOKENIZER_FILE)

    model = GPT(cfg.model)
    check_protection(configure(model, sc), sc)        # the layers hold k from here on
    optimizer = SparseAdamW(param_groups(model, weight_decay=tc.weight_decay), lr=tc.lr,
                            betas=(tc.beta1, tc.beta2), eps=tc.eps, grad_rms_norm=tc.grad_rms_norm,
                            backend=tc.backend)
    state = ckpt.read_state(out) if resume else {"step": 0, "finished": False}
    start = int(state["step"])
    if resume and start > 0:
        ckpt.load_model_weights(out, model, expect_step=start)
        ckpt.load_optimizer_state(out, model, optimizer, start)
    if resume:
        ckpt.truncate_metrics(out, start)
    model.to(device).train()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())

    total = tc.steps
    end = total if max_steps is None else min(total, start + max_steps)
    ks = write_ks(model, max(0, start - 1), total, sc) if start > 0 else {}
    bar = _progress_bar(progress, start, total)
    history: list[dict] = []
    last_loss = val_loss = None
    last_good = start
    t0, tokens_since = time.perf_counter(), 0
    stop = _StopFlag()
    try:
        for step in range(start, end):
            lr = learning_rate(step, tc, sc)
            ks = write_ks(model, step, total, sc)            # the schedule writes k into the layers
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = dataset.get_batch("train", tc.batch_size, tc.seq_len, step, tc.seed)
            x, y = x.to(device), y.to(device)
            loss = _lm_loss(model, x, y, autocast)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at step {step + 1}; the last good checkpoint "
                                       f"(step {last_good}) is kept in {out}; lower train.lr and --resume or "
                                       f"retrain with --force")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            faults.point("step")
            optimizer.step()
            last_loss = loss_value
            tokens_since += x.numel()
            done = step + 1
            measure_val = done % tc.eval_every == 0 or done == total
            if measure_val:
                val_loss = evaluate_val(model, dataset, cfg, device, autocast)
            if done % tc.log_every == 0 or measure_val or done == end:
                dt = time.perf_counter() - t0
                row = dict(step=done, tokens=done * tc.batch_size * tc.seq_len, loss=round(loss_value, 5),
                           lr=lr, density=round(weight_density(step, total, sc), 6),
                           embed_density=round(embed_density(step, total, sc), 6),
                           tokens_per_s=round(tokens_since / dt, 1) if dt > 0 else None)
                if measure_val:
                    row["val_loss"] = round(val_loss, 5)
                ckpt.append_metrics(out, row)
                history.append(row)
                t0, tokens_since = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.3f}", density=f"{row['density']:.3g}", lr=f"{lr:.2e}",
                                    tok_s=f"{row['tokens_per_s']:.0f}" if row["tokens_per_s"] else "-")
            if done % tc.ckpt_every == 0 or done == total or done == end or stop.requested:
                ckpt.save_checkpoint(out, model, optimizer, done, ks, finished=(done == total))
                last_good = done
            if bar is not None:
                bar.update(1)
            if stop.requested and last_good == done:    # (one between the two checks stops after the next step)
                log.warning("interrupted: checkpoint at step %d saved in %s; continue with --resume",
                            last_good, out)
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
    return TrainResult(run_dir=out, step=last_good, final_loss=last_loss, val_loss=val_loss,
                       interrupted=stop.requested and last_good < total, history=history)


class _StopFlag:
    """First Ctrl-C asks the loop to finish the current step, checkpoint and stop; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: finishing this step and saving a checkpoint (press again to abort)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
