"""DDP on 2 CPU ranks (gloo) against one process: bit for bit with --grad-accum 2, resume 2 -> 1 and 1 -> 2,
a signal on one rank stops both after the same step, and the loss curve against one process on the whole
batch at once.

Why bit for bit: each rank's micro-batch is the one process's micro-batch of the same index (the same
forward and backward, the same bytes), and the step's gradient is g0/2 + g1/2 in both (the one process
scales each micro-batch's loss by 1/2, DDP averages the two ranks: a sum of two floats is the same in either
order and halving is exact). docs/distributed.md says what holds at more ranks.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dist_launch import STEPS, launch_worker, small_config
from sparseformer.checkpoint import MODEL_FILE, OPTIM_FILE, checkpoint_file, read_state
from sparseformer.runfiles import load_tensors, read_metrics
from sparseformer.train import train


def _bytes(run, name):
    return checkpoint_file(run, name).read_bytes()


def _same_checkpoint(a, b) -> list[str]:
    """What differs between the current checkpoints of runs a and b: model.safetensors byte for byte;
    optim.safetensors tensor for tensor and its metadata (safetensors writes the metadata keys in hash
    order, which changes from process to process, so its bytes are not compared)."""
    bad = [] if _bytes(a, MODEL_FILE) == _bytes(b, MODEL_FILE) else [MODEL_FILE]
    (ta, ma), (tb, mb) = (load_tensors(checkpoint_file(r, OPTIM_FILE)) for r in (a, b))
    if ma != mb or ta.keys() != tb.keys():
        bad.append(f"{OPTIM_FILE} metadata or names")
    bad += [f"{OPTIM_FILE}:{n}" for n in ta if n in tb and not torch.equal(ta[n], tb[n])]
    return bad


@pytest.fixture(scope="module")
def runs(dist_env, tmp_path_factory):
    """One process with --grad-accum 2 (straight, and stopped at step 3 to be resumed by 2 ranks), one
    process without, and one launch of 2 DDP ranks running: a whole run; a run that rank 1 interrupts with
    SIGINT at its third step (then resumed here by one process with --grad-accum 2); and the resume of the
    one-process run stopped at step 3."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = small_config(dist_env)
    r = {name: root / name for name in ("single", "plain", "ddp", "ddp_stop", "single_stop", "ddp_accum")}
    train(cfg, r["single"], progress=False, grad_accum=2)
    train(cfg, r["plain"], progress=False)
    train(cfg, r["single_stop"], progress=False, grad_accum=2, max_steps=3)
    c = cfg.to_dict()
    launch_worker(dist_env, 2, [
        {"kind": "train", "config": c, "out": str(r["ddp"]), "dist": "ddp"},
        {"kind": "train", "config": c, "out": str(r["ddp_stop"]), "dist": "ddp", "faults": {"1": "sigint@step#3"}},
        {"kind": "train", "config": c, "out": str(r["single_stop"]), "dist": "ddp", "resume": True},
        {"kind": "train", "config": c, "out": str(r["ddp_accum"]), "dist": "ddp", "grad_accum": 2},
    ], "ddp_jobs")
    r["stopped_at"] = read_state(r["ddp_stop"])["step"]
    r["stopped_sets"] = sorted(p.name for p in (r["ddp_stop"] / "checkpoints").iterdir())
    train(cfg, r["ddp_stop"], progress=False, grad_accum=2, resume=True)
    return r


def test_ddp_two_ranks_equal_one_process_with_grad_accum_2_bit_for_bit(runs):
    assert _same_checkpoint(runs["ddp"], runs["single"]) == []     # weights (so masks) and Adam moments
    assert [r["loss"] for r in read_metrics(runs["ddp"])] == [r["loss"] for r in read_metrics(runs["single"])]
    weights = load_file(str(checkpoint_file(runs["ddp"], MODEL_FILE)))
    for name, k in read_state(runs["ddp"])["ks"].items():
        assert int(torch.count_nonzero(weights[name])) == k, name


def test_sigint_on_one_rank_stops_both_after_the_same_step_with_one_checkpoint(runs):
    assert runs["stopped_at"] == 3                        # rank 1's signal came in its third step
    assert len(runs["stopped_sets"]) == 1 and runs["stopped_sets"][0].startswith("step-00000003")


def test_resume_two_ranks_to_one_and_one_to_two_continue_bit_for_bit(runs):
    for run in ("ddp_stop", "single_stop"):               # 2 -> 1 (grad-accum 2) and 1 -> 2 (DDP)
        assert read_state(runs[run])["step"] == STEPS
        assert _same_checkpoint(runs[run], runs["single"]) == [], run
        assert [r["step"] for r in read_metrics(runs[run])] == list(range(1, STEPS + 1))   # each row once


def test_loss_curve_against_one_process_on_the_whole_batch(runs):
    """Micro-batches change only the rounding of the gradient (a sum of pieces instead of one mean), so the
    runs part in the last bits and, through the top-k, by a little more: 2% of the loss over 6 steps. The
    same holds for 2 ranks with --grad-accum 2."""
    ddp = [r["loss"] for r in read_metrics(runs["ddp"])]
    plain = [r["loss"] for r in read_metrics(runs["plain"])]
    accum = [r["loss"] for r in read_metrics(runs["ddp_accum"])]     # 2 ranks x --grad-accum 2: 4 pieces
    assert len(ddp) == len(plain) == len(accum) == STEPS
    assert ddp[0] == pytest.approx(plain[0], rel=1e-5)   # the same weights, so the same loss up to rounding
    assert all(a == pytest.approx(b, rel=0.02) for a, b in zip(ddp, plain)), (ddp, plain)
    assert all(a == pytest.approx(b, rel=0.02) for a, b in zip(accum, plain)), (accum, plain)
    # the run directory is the one-process format: the same config.json, whatever the ranks
    assert json.loads((runs["ddp"] / "config.json").read_text()) == json.loads((runs["plain"] / "config.json").read_text())
