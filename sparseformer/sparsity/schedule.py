"""The L0 anneal and the sharkfin learning rate, as pure functions of the step (docs/method.md explains both).

Steps are 0-based: step t in [0, T) is the (t+1)-th optimizer step.

Anneal progress  s(t) = clip((t - a T) / (b T - a T), 0, 1), then s <- 1 - (1 - s)^p  (a, b = anneal_start/end).
Weight density   d_W(t) = lerp(1, d_W_final, s)              (pfrac_t / e^2 in the paper's units; also wpe).
Embedding/bias density (wte, lm_head, biases), with r = d_E_final / d_W_final (= e in the paper):
  "paper" (the schedule of the paper's released models):  d_E(t) = min(1, r * d_W(t)); these tensors stay dense
           until d_W(t) < 1/r and then sparsify in a short burst;
  "fixed"  (the released train.py):                      d_E(t) = lerp(1, d_E_final, s).
Learning rate    lr(t) = lr_peak * base(t) * sqrt(d_W_final / d_W(t))   (the last factor only for a sparse run
                 with sharkfin on)
  base(t) = (t + 1) / W during warmup (t < W, W = round(warmup_frac * T), at least 1 when warmup_frac > 0),
            1 - (t - W) / (T - W) afterwards (linear decay towards 0).
"""

from __future__ import annotations

import math

from ..config import SparsityConfig, TrainConfig


def anneal_progress(step: int, total: int, cfg: SparsityConfig) -> float:
    """s(t) in [0, 1]: how far the L0 anneal has gone at this step."""
    start, end = cfg.anneal_start * total, cfg.anneal_end * total
    if end <= start:
        s = 1.0 if step >= start else 0.0
    else:
        s = min(1.0, max(0.0, (step - start) / (end - start)))
    return 1.0 - (1.0 - s) ** cfg.anneal_power


def weight_density(step: int, total: int, cfg: SparsityConfig) -> float:
    """Fraction of each weight matrix kept at this step (1.0 for a dense run)."""
    if cfg.dense:
        return 1.0
    s = anneal_progress(step, total, cfg)
    return 1.0 + (cfg.weight_density - 1.0) * s


def embed_density(step: int, total: int, cfg: SparsityConfig) -> float:
    """Fraction of wte, lm_head and each bias kept at this step, per cfg.embed_schedule."""
    if cfg.dense:
        return 1.0
    final = cfg.final_embed_density
    if cfg.embed_schedule == "paper":
        ratio = final / cfg.weight_density
        return min(1.0, ratio * weight_density(step, total, cfg))
    s = anneal_progress(step, total, cfg)
    return 1.0 + (final - 1.0) * s


def lr_base(step: int, total: int, warmup_frac: float) -> float:
    """Warmup then linear decay, in [0, 1]."""
    warmup = max(1, round(warmup_frac * total)) if warmup_frac > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return max(0.0, 1.0 - (step - warmup) / (total - warmup))


def learning_rate(step: int, train: TrainConfig, sparsity: SparsityConfig) -> float:
    """The sharkfin learning rate at this step (module docstring)."""
    lr = train.lr * lr_base(step, train.steps, train.warmup_frac)
    if train.sharkfin and not sparsity.dense:
        lr *= math.sqrt(sparsity.weight_density / weight_density(step, train.steps, sparsity))
    return lr


def k_for(numel: int, density: float) -> int:
    """Entries kept in a tensor of `numel` at `density`: floor(density * numel), clipped to [0, numel]."""
    return max(0, min(numel, int(math.floor(density * numel + 1e-9))))
