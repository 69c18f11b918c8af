"""Forward passes with node masks: mean or zero ablation at the mask sites, optional frozen norms.

A mask is a keep value per node (1 keeps the channel, 0 replaces it by its ablation value). At each site the
hook computes `keep * x + (1 - keep) * mean`, so keep = 1 everywhere reproduces the unpruned model and a
differentiable keep (the Heaviside surrogate of search.py) gets gradient `x - mean`.

Frozen norms (docs/pruning.md; the norm-scale cheating a replication by J. Drori found): pruning shrinks the residual stream, and each RMSNorm scales it back
up, so a few weak nodes can swing the logits. With `freeze_norms=True` each RMSNorm (ln_1 and ln_2 of every
layer, and ln_f) divides its input by the per-token RMS, sqrt(mean(x^2) + eps), that it saw in the
*unpruned* model on the same sequences, instead of the RMS of its (pruned) input. The learned gains are
unchanged; no gradient flows through the frozen divisor.

Only the last real position of each sequence is scored, so the final_resid hook gathers that position
before ln_f and lm_head run (they act per position); this skips the unembedding of every other position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import HookFn, replace
from .sites import FINAL
from ..tasks.dataset import TaskBatch
from ..tasks.loss import contrast_loss


def calibrated_loss(logits: Tensor, batch: TaskBatch, scale: Tensor | float = 1.0,
                    shift: Tensor | float = 0.0) -> Tensor:
    """The task suite's mean per-sequence contrast loss of last-position logits [2N, V] (A rows first), after
    the optional calibration z -> scale * z plus `shift` on target A's logit. A shift of every logit alike
    would cancel in the softmax, so the shift moves target A against the rest."""
    z = logits.float() * scale
    if torch.is_tensor(shift) or shift != 0:
        tok = torch.cat([batch.target_a, batch.target_a]).to(z.device)
        z = z + shift * F.one_hot(tok, z.shape[1]).to(z.dtype)
    n = batch.n_pairs
    return contrast_loss(z[:n], z[n:], batch.target_a, batch.target_b, batch.kind)


def mask_hook(keep: Tensor, mean: Tensor) -> HookFn:
    """fn(x, name) -> keep * x + (1 - keep) * mean, per channel (keep, mean: [width]).
    One pass over x, and exact for keep in {0, 1}: x * 1 + 0 = x, and x * 0 + mean = mean."""
    rest = (1 - keep) * mean

    def fn(x: Tensor, _name: str) -> Tensor:
        return torch.addcmul(rest.to(x.dtype), x, keep.to(x.dtype))
    return fn


def _rms(norm: nn.RMSNorm, x: Tensor) -> Tensor:
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _norms(model: nn.Module) -> list[nn.RMSNorm]:
    return [m for m in model.modules() if isinstance(m, nn.RMSNorm)]


@contextmanager
def _module_hooks(modules: list[nn.Module], make) -> Iterator[None]:
    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def recorded_norm_scales(model: nn.Module) -> Iterator[list]:
    """Record every RMSNorm's per-token RMS divisor during the forward passes inside the block."""
    norms = _norms(model)
    scales: list = [None] * len(norms)

    def make(i):
        def hook(mod, inputs, _out):
            scales[i] = _rms(mod, inputs[0]).detach()
        return hook

    with _module_hooks(norms, make):
        yield scales


@contextmanager
def frozen_norm_scales(model: nn.Module, scales: list[Tensor]) -> Iterator[None]:
    """Make every RMSNorm divide by the given recorded divisors instead of its input's RMS."""
    def make(i):
        def hook(mod, inputs, _out):
            y = inputs[0] / scales[i]
            return y if mod.weight is None else y * mod.weight
        return hook

    with _module_hooks(_norms(model), make):
        yield


class Ablator:
    """Runs the model on task batches with some nodes ablated, and scores the contrast loss.

    means: site -> [width] ablation values (zeros for zero ablation). A keep dict maps each site to a
    [width] keep vector (0/1 floats, or a differentiable surrogate); keep=None runs the unpruned model.
    `values`, when given, replaces the means with per-row values: fn(batch) -> site -> [2P, T, width]
    (resample ablation, see faithfulness.py).
    """

    def __init__(self, model: nn.Module, means: dict[str, Tensor], *, freeze_norms: bool = False,
                 eval_pairs: int = 128, values: Callable[[TaskBatch], dict[str, Tensor]] | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.means = {s: m.to(self.device, torch.float32) for s, m in means.items()}
        self.freeze_norms = freeze_norms
        self.eval_pairs = eval_pairs
        self.values = values

    def _forward_last(self, batch: TaskBatch, hooks: dict[str, HookFn],
                      watch: dict[str, Tensor] | None = None) -> Tensor:
        rows = torch.arange(batch.idx.shape[0], device=self.device)
        masked_final = hooks.get(FINAL)

        def final(x: Tensor, name: str) -> Tensor:
            x = x[rows, batch.last].unsqueeze(1)                   # [2P, 1, d_model]
            return x if masked_final is None else masked_final(x, name)

        hooks = {**hooks, FINAL: final}
        for name in list(watch or ()):                             # record what flows on, after the mask
            hooks[name] = _watching(hooks.get(name), watch, name)
        with replace(self.model, hooks):
            out = self.model(batch.idx)                            # [2P, 1, V] ([2P, T, V] with a bigram table)
        return out[:, 0] if out.shape[1] == 1 else out[rows, batch.last]

    def _hooks(self, batch: TaskBatch, keep: dict[str, Tensor]) -> dict[str, HookFn]:
        if self.values is None:
            return {s: mask_hook(k.to(self.device), self.means[s]) for s, k in keep.items()}
        values = self.values(batch)
        rows = torch.arange(batch.idx.shape[0], device=self.device)
        values[FINAL] = values[FINAL][rows, batch.last].unsqueeze(1)   # final_resid is masked at the last position
        return {s: mask_hook(k.to(self.device), values[s]) for s, k in keep.items()}

    def logits(self, batch: TaskBatch, keep: dict[str, Tensor] | None,
               watch: dict[str, Tensor] | None = None) -> Tensor:
        """Last-position logits [2P, V] with the nodes of `keep` kept and the rest ablated. The activations
        (after masking) at the hook names that key `watch` are stored into it."""
        batch = batch.to(self.device)
        if keep is None:
            return self._forward_last(batch, {}, watch)
        hooks = self._hooks(batch, keep)
        if not self.freeze_norms:
            return self._forward_last(batch, hooks, watch)
        with torch.no_grad(), recorded_norm_scales(self.model) as scales:
            self._forward_last(batch, {})
        with frozen_norm_scales(self.model, scales):
            return self._forward_last(batch, hooks, watch)

    def loss(self, batch: TaskBatch, keep: dict[str, Tensor] | None, scale=1.0, shift=0.0) -> Tensor:
        """Per-sequence contrast loss (differentiable in keep)."""
        return calibrated_loss(self.logits(batch, keep), batch.to(self.device), scale, shift)

    @torch.no_grad()
    def eval_logits(self, batch: TaskBatch, keep: dict[str, Tensor] | None) -> tuple[Tensor, TaskBatch]:
        """Logits of a whole (large) batch in chunks, with the batch they line up with (A rows first)."""
        za, zb = [], []
        for chunk in batch.batches(self.eval_pairs):
            z = self.logits(chunk, keep)
            za.append(z[:chunk.n_pairs])
            zb.append(z[chunk.n_pairs:])
        return torch.cat(za + zb), batch.to(self.device)

    @torch.no_grad()
    def eval_loss(self, batch: TaskBatch, keep: dict[str, Tensor] | None, scale=1.0, shift=0.0) -> float:
        z, b = self.eval_logits(batch, keep)
        return float(calibrated_loss(z, b, scale, shift))


def _watching(fn: HookFn | None, store: dict[str, Tensor], name: str) -> HookFn:
    def watch(x: Tensor, hook_name: str) -> Tensor | None:
        out = fn(x, hook_name) if fn is not None else None
        store[name] = (x if out is None else out).detach()
        return out
    return watch


@contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Switch off requires_grad on every parameter (masks are the only trainable thing) and use eval mode."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)

