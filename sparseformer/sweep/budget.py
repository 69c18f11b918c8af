"""Turn a sweep budget (tokens, minutes or steps per model) into a step count for the schedules.

The L0 anneal and the learning-rate decay are laid out over a known number of steps (fractions of the run), so a
minutes budget is converted to steps before training starts: a timing probe trains the model for
`PROBE_STEPS` steps in a scratch directory, with weight sparsity on from the first step (the cost of most of
a real run), and reads tokens per second from the probe's metrics: the median over its second half (the first steps run
slow) without the last step (it includes a validation pass). The step count is then

    steps = floor(SAFETY * minutes * 60 * steps_per_s / (1 + eval_overhead))

with eval_overhead = eval_batches / (3 * eval_every), a forward pass costing about a third of a training
step. The estimate is stored in the run's config.json, so a resumed sweep keeps it.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import statistics
from pathlib import Path

from ..config import RunConfig

log = logging.getLogger(__name__)

PROBE_STEPS = 32
SAFETY = 0.95
MIN_STEPS = 20


def steps_for_tokens(cfg: RunConfig, tokens: int) -> int:
    """Steps that consume `tokens` training tokens (rounded up) at the config's batch and context."""
    return max(1, math.ceil(tokens / (cfg.train.batch_size * cfg.train.seq_len)))


def probe_steps_per_s(cfg: RunConfig, scratch: Path) -> float:
    """Training steps per second of `cfg` on this machine, from a short probe run in `scratch` (removed)."""
    from ..train import train
    probe = copy.deepcopy(cfg)
    probe.train.steps = PROBE_STEPS
    probe.train.log_every = 1
    probe.train.eval_every = 10 ** 9
    probe.train.ckpt_every = 10 ** 9
    probe.sparsity.anneal_start = probe.sparsity.anneal_end = 0.0
    try:
        result = train(probe.validate(), scratch, force=True, progress=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = result.history[:-1]                                    # the last row includes a validation pass
    rates = [row["tokens_per_s"] for row in rows[len(rows) // 2:] if row.get("tokens_per_s")]
    if not rates:                                                 # the first steps run slow (allocation, warm-up)
        rates = [row["tokens_per_s"] for row in result.history if row.get("tokens_per_s")]
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    return statistics.median(rates) / tokens_per_step


def steps_for_minutes(cfg: RunConfig, minutes: float, steps_per_s: float) -> int:
    """Steps that fit in `minutes` at `steps_per_s`, allowing for validation passes (module docstring)."""
    overhead = cfg.train.eval_batches / (3 * cfg.train.eval_every)
    return max(MIN_STEPS, math.floor(SAFETY * minutes * 60 * steps_per_s / (1 + overhead)))
