"""Contrast loss and accuracy (docs/tasks.md), token batches (truncation, padding, drops), and evaluation."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sparseformer.errors import TaskError
from sparseformer.tasks import (MAX_LEN, PAD_ID, Pair, contrast_accuracy, contrast_correct, contrast_loss,
                                contrast_losses, encode_pairs, evaluate, evaluate_batch, get_task, make_batch,
                                task_logits, task_loss)

from .conftest import CausalToy, CharTokenizer, Oracle


def _logits(n: int, v: int, seed: int) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


@given(n=st.integers(1, 6), v=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_binary_loss_is_two_way_cross_entropy_per_sequence(n, v, seed):
    za, zb = _logits(n, v, seed), _logits(n, v, seed + 1)
    g = torch.Generator().manual_seed(seed)
    ta = torch.randint(0, v, (n,), generator=g)
    tb = (ta + torch.randint(1, v, (n,), generator=g)) % v
    per = contrast_losses(za, zb, ta, tb, "binary")
    for i in range(n):
        two_a = torch.stack([za[i, ta[i]], za[i, tb[i]]]).log_softmax(0)
        two_b = torch.stack([zb[i, ta[i]], zb[i, tb[i]]]).log_softmax(0)
        assert torch.allclose(per[i], torch.stack([-two_a[0], -two_b[1]]), atol=1e-5)
    pair_sum = per.sum(1)  # the reference code's per-pair value is twice ours
    assert torch.allclose(contrast_loss(za, zb, ta, tb), pair_sum.mean() / 2, atol=1e-6)
    right = contrast_correct(za, zb, ta, tb)
    assert torch.equal(right[:, 0], za.gather(1, ta[:, None])[:, 0] > za.gather(1, tb[:, None])[:, 0])
    assert torch.equal(right, per < math.log(2))  # right exactly when the sequence's loss is below log 2
    assert contrast_accuracy(za, zb, ta, tb) == pytest.approx(right.float().mean().item())


@given(n=st.integers(1, 6), v=st.integers(2, 12), seed=st.integers(0, 10_000))
@example(n=1, v=2, seed=9379)                       # p_B(tok) rounds to 1 in float32
def test_full_vocab_loss(n, v, seed):
    za, zb = _logits(n, v, seed), _logits(n, v, seed + 1)
    ta = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed))
    per = contrast_losses(za, zb, ta, ta, "full_vocab")  # tok_b is unused by this variant
    pa, pb = za.softmax(1), zb.softmax(1)
    idx = torch.arange(n)
    # float64 reference: 1 - p in float32 loses the digits that matter when p is close to 1
    pa64, pb64 = za.double().softmax(1), zb.double().softmax(1)
    assert torch.allclose(per[:, 0].double(), -pa64[idx, ta].log(), atol=1e-4, rtol=1e-4)
    assert torch.allclose(per[:, 1].double(), -(1 - pb64[idx, ta]).log(), atol=1e-4, rtol=1e-4)
    right = contrast_correct(za, zb, ta, ta, "full_vocab")
    assert torch.equal(right, torch.stack([pa[idx, ta] > 0.5, pb[idx, ta] < 0.5], 1))


def test_accuracy_counts_sequences_and_ties_are_wrong():
    za = torch.tensor([[2.0, 0.0], [0.0, 1.0]])   # pair 0: A right; pair 1: A wrong
    zb = torch.tensor([[0.0, 1.0], [1.0, 1.0]])   # pair 0: B right; pair 1: a tie
    tok_a, tok_b = torch.tensor([0, 0]), torch.tensor([1, 1])
    assert contrast_correct(za, zb, tok_a, tok_b).tolist() == [[True, True], [False, False]]
    assert contrast_accuracy(za, zb, tok_a, tok_b) == 0.5


def test_loss_is_differentiable_and_checks_shapes():
    za = torch.zeros(3, 5, requires_grad=True)
    contrast_loss(za, torch.zeros(3, 5), torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])).backward()
    assert za.grad is not None and za.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        contrast_loss(torch.zeros(3, 5), torch.zeros(2, 5), torch.zeros(3, dtype=torch.long),
                      torch.zeros(3, dtype=torch.long))
    with pytest.raises(TaskError, match="kind"):
        contrast_loss(za, za, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), "nope")


# -- batches -----------------------------------------------------------------------------------------

def test_encode_prepends_eot_pads_right_and_truncates_left():
    tok = CharTokenizer()
    long_prompt = "x = 1\n" * 100 + "print('abc"
    pairs = [Pair("ab", "c", "ab", "d"), Pair(long_prompt, "')", long_prompt.replace("'", '"'), '")')]
    b = encode_pairs(pairs, tok, task="t")
    assert b.lengths_a.tolist() == [3, MAX_LEN]
    assert b.tokens_a[0, :3].tolist() == [tok.eot_id] + tok.encode("ab")
    assert bool((b.tokens_a[0, 3:] == PAD_ID).all())
    assert b.tokens_a[1].tolist() == tok.encode(long_prompt)[-MAX_LEN:]  # EOT and the start cut away
    assert b.target_a.tolist() == [tok.encode("c")[0], tok.encode("'")[0]]
    assert b.target_b.tolist() == [tok.encode("d")[0], tok.encode('"')[0]]
    sub = b.select([0])
    assert sub.tokens_a.shape == (1, 3) and sub.pairs == (pairs[0],)
    assert [len(s) for s in b.batches(1)] == [1, 1]


def test_colliding_targets_are_refused_with_one_clear_line():
    tok = CharTokenizer(same="\"'")  # both quotes become one token
    with pytest.raises(TaskError) as err:
        make_batch(get_task("single_double_quote"), tok, n=8)
    msg = str(err.value)
    assert "single_double_quote" in msg and "both begin with token" in msg and "\n" not in msg


def test_targets_merging_into_the_prompt_are_dropped_or_refused(tokenizer, caplog):
    good = [Pair(f"x = foo{i}", " +", f"x{i} = foo", " =") for i in range(6)]
    bad = Pair("print(x", ")", "print(y", ")\n")  # not refused: `)` then nothing is still a clean boundary
    merged = Pair("value = f(x)", "\n", "value = g(x)", " +")  # `)` + `\n` is one token `)\n`
    with caplog.at_level(logging.WARNING):
        b = encode_pairs(good + [bad, merged], tokenizer, task="mix")
    assert len(b) == 7 and b.n_dropped == 1 and "dropped 1 of 8" in caplog.text
    with pytest.raises(TaskError, match="merges with the end of the prompt"):
        encode_pairs([merged] * 3 + good[:1], tokenizer, task="mostly_merged")


# -- running a model -----------------------------------------------------------------------------------

def test_task_logits_right_padding_matches_unpadded_runs(tokenizer):
    model = CausalToy(vocab=tokenizer.vocab_size)
    batch = make_batch(get_task("var_swap"), tokenizer, n=6)
    la, lb = task_logits(model, batch)
    assert la.shape == (6, tokenizer.vocab_size)
    for i in range(6):
        for tokens, lengths, got in ((batch.tokens_a, batch.lengths_a, la), (batch.tokens_b, batch.lengths_b, lb)):
            row = tokens[i, :lengths[i]][None]
            assert torch.allclose(model(row)[0, -1], got[i], atol=1e-5)


def test_task_loss_is_a_differentiable_plain_forward(tokenizer):
    model = CausalToy(vocab=tokenizer.vocab_size)
    batch = make_batch(get_task("for_while"), tokenizer, split="train", n=4)
    loss = task_loss(model, batch)
    loss.backward()
    assert loss.ndim == 0 and model.emb.grad is not None and model.out.grad.abs().sum() > 0


def test_evaluate_scores_an_oracle_perfectly(tokenizer):
    tasks = [get_task("bracket_counting"), get_task("else_elif")]
    answers = {}
    for task in tasks:
        b = make_batch(task, tokenizer, n=8)
        for tokens, lengths, targets in ((b.tokens_a, b.lengths_a, b.target_a), (b.tokens_b, b.lengths_b, b.target_b)):
            for i in range(len(b)):
                answers[tuple(tokens[i, :lengths[i]].tolist())] = int(targets[i])
    rows = evaluate(Oracle(answers, tokenizer.vocab_size), tokenizer, tasks, n=8, batch_size=3)
    assert [r["task"] for r in rows] == ["bracket_counting", "else_elif"]
    for r in rows:
        assert r["accuracy"] == 1.0 and r["n"] == 8 and r["loss"] < 0.01
    # else_elif is full_vocab: side B is right only if it avoids `:\n`, which the oracle's B answer does.
    random_rows = evaluate(CausalToy(vocab=tokenizer.vocab_size), tokenizer, "bracket_counting", n=8)
    assert 0 < random_rows[0]["loss"] < 20 and random_rows[0]["n"] == 8


def test_evaluate_batch_is_independent_of_batch_size(tokenizer):
    model = CausalToy(vocab=tokenizer.vocab_size)
    batch = make_batch(get_task("if_equals"), tokenizer, n=10)
    r1, r2 = evaluate_batch(model, batch, batch_size=3), evaluate_batch(model, batch, batch_size=10)
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5) and r1["accuracy"] == r2["accuracy"]


def test_evaluate_needs_a_tokenizer():
    with pytest.raises(TaskError, match="tokenizer"):
        evaluate(CausalToy(), None, "for_while")


def test_evaluate_truncates_prompts_to_the_model_context(tokenizer):
    """A model with a short block_size sees only its last block_size tokens (and never more than it can take)."""
    class ShortContext(CausalToy):
        def __init__(self, block_size):
            super().__init__(vocab=tokenizer.vocab_size)
            self.config = SimpleNamespace(block_size=block_size)
            self.longest = 0

        def forward(self, idx):
            assert idx.shape[1] <= self.config.block_size
            self.longest = max(self.longest, idx.shape[1])
            return super().forward(idx)

    model = ShortContext(block_size=24)
    row = evaluate(model, tokenizer, "else_elif", n=8)[0]
    assert model.longest == 24 and row["n"] == 8
    cut = make_batch(get_task("else_elif"), tokenizer, n=8, max_len=24)
    assert row["loss"] == pytest.approx(evaluate_batch(CausalToy(vocab=tokenizer.vocab_size), cut)["loss"], rel=1e-6)


def test_cross_entropy_kind_scores_each_side_by_its_own_token():
    za, zb = torch.randn(3, 6), torch.randn(3, 6)
    ta, tb = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    per = contrast_losses(za, zb, ta, tb, "cross_entropy")
    expect_a = torch.nn.functional.cross_entropy(za, ta, reduction="none")
    expect_b = torch.nn.functional.cross_entropy(zb, tb, reduction="none")
    assert torch.allclose(per, torch.stack([expect_a, expect_b], 1), atol=1e-6)
    sure = torch.full((3, 6), -9.0)
    sure[torch.arange(3), ta] = 9.0
    sure_b = torch.full((3, 6), -9.0)
    sure_b[torch.arange(3), tb] = 9.0
    assert contrast_correct(sure, sure_b, ta, tb, "cross_entropy").all()
    assert not contrast_correct(sure_b, sure, ta, tb, "cross_entropy").any()
