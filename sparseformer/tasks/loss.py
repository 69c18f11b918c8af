"""The two-sided last-token contrast loss (docs/tasks.md), and accuracy.

Inputs are the logits at the last real position of each prompt: `logits_a` [N, V] for the A prompts,
`logits_b` [N, V] for the B prompts, and the scored tokens `tok_a`, `tok_b` [N].

kind="binary": each side is a 2-way softmax over the two candidate logits (z[tok_a], z[tok_b]);
    loss_A = -log softmax_2(z_A)[tok_a],  loss_B = -log softmax_2(z_B)[tok_b].
kind="full_vocab": side A must predict tok_a over the whole vocabulary, side B must avoid it;
    loss_A = -log p_A(tok_a),  loss_B = -log(1 - p_B(tok_a)) = -log sum_{j != tok_a} p_B(j).
kind="cross_entropy": each side must predict its own token over the whole vocabulary (the pruner's nonsense
    control, docs/pruning.md); loss_A = -log p_A(tok_a),  loss_B = -log p_B(tok_b).

Convention: losses are reported PER SEQUENCE, i.e. the mean over the 2N sequences
= (sum over pairs of loss_A + loss_B) / (2N). The reference code sums the two sides of a pair, which is
twice this number; a pruning target of 0.15 is read in our per-sequence units.

Accuracy is the fraction of the 2N sequences whose correct class beats the other: binary, z_A[tok_a] >
z_A[tok_b] and z_B[tok_b] > z_B[tok_a]; full_vocab, p_A(tok_a) > 1/2 and p_B(tok_a) < 1/2; cross_entropy,
p_A(tok_a) > 1/2 and p_B(tok_b) > 1/2. Ties count
as wrong. (Equivalently, a sequence is right when its loss is below log 2.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TaskError


LOSS_KINDS = ("binary", "full_vocab", "cross_entropy")


def _check(logits_a: Tensor, logits_b: Tensor, tok_a: Tensor, tok_b: Tensor, kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise TaskError(f"kind={kind!r}; use one of {', '.join(LOSS_KINDS)}")
    if logits_a.ndim != 2 or logits_a.shape != logits_b.shape:
        raise ValueError(f"contrast loss: want logits_a, logits_b of one shape [N, V], got "
                         f"{tuple(logits_a.shape)} and {tuple(logits_b.shape)}")
    if tok_a.shape != (logits_a.shape[0],) or tok_b.shape != tok_a.shape:
        raise ValueError(f"contrast loss: want tok_a, tok_b of shape [{logits_a.shape[0]}], got "
                         f"{tuple(tok_a.shape)} and {tuple(tok_b.shape)}")


def _pick(z: Tensor, tok: Tensor) -> Tensor:
    return z.gather(1, tok[:, None].to(z.device)).squeeze(1)


def _logsumexp_without(z: Tensor, tok: Tensor) -> Tensor:
    """log sum_{j != tok} exp z_j, per row."""
    mask = F.one_hot(tok.to(z.device), z.shape[1]).bool()
    return z.masked_fill(mask, float("-inf")).logsumexp(dim=1)


def contrast_losses(logits_a: Tensor, logits_b: Tensor, tok_a: Tensor, tok_b: Tensor,
                    kind: str = "binary") -> Tensor:
    """Per-sequence losses, shape [N, 2] (column 0: the A prompts, column 1: the B prompts), in fp32."""
    _check(logits_a, logits_b, tok_a, tok_b, kind)
    za, zb = logits_a.float(), logits_b.float()
    if kind == "binary":
        loss_a = F.softplus(_pick(za, tok_b) - _pick(za, tok_a))  # -log sigmoid(z[tok_a] - z[tok_b])
        loss_b = F.softplus(_pick(zb, tok_a) - _pick(zb, tok_b))
    elif kind == "full_vocab":
        loss_a = za.logsumexp(dim=1) - _pick(za, tok_a)
        loss_b = zb.logsumexp(dim=1) - _logsumexp_without(zb, tok_a)
    else:
        loss_a = za.logsumexp(dim=1) - _pick(za, tok_a)
        loss_b = zb.logsumexp(dim=1) - _pick(zb, tok_b)
    return torch.stack([loss_a, loss_b], dim=1)


def contrast_loss(logits_a: Tensor, logits_b: Tensor, tok_a: Tensor, tok_b: Tensor,
                  kind: str = "binary") -> Tensor:
    """Mean per-sequence contrast loss (a scalar; half the per-pair sum). Differentiable."""
    return contrast_losses(logits_a, logits_b, tok_a, tok_b, kind).mean()


def contrast_correct(logits_a: Tensor, logits_b: Tensor, tok_a: Tensor, tok_b: Tensor,
                     kind: str = "binary") -> Tensor:
    """Bool [N, 2]: whether each sequence's correct class beats the other (see the module docstring)."""
    _check(logits_a, logits_b, tok_a, tok_b, kind)
    za, zb = logits_a.detach().float(), logits_b.detach().float()
    if kind == "binary":
        right_a = _pick(za, tok_a) > _pick(za, tok_b)
        right_b = _pick(zb, tok_b) > _pick(zb, tok_a)
    elif kind == "full_vocab":
        right_a = _pick(za, tok_a) > _logsumexp_without(za, tok_a)
        right_b = _pick(zb, tok_a) < _logsumexp_without(zb, tok_a)
    else:
        right_a = _pick(za, tok_a) > _logsumexp_without(za, tok_a)
        right_b = _pick(zb, tok_b) > _logsumexp_without(zb, tok_b)
    return torch.stack([right_a, right_b], dim=1)


def contrast_accuracy(logits_a: Tensor, logits_b: Tensor, tok_a: Tensor, tok_b: Tensor,
                      kind: str = "binary") -> float:
    """Fraction of the 2N sequences whose correct token beats the other."""
    return contrast_correct(logits_a, logits_b, tok_a, tok_b, kind).float().mean().item()
