"""FSDP2 on 2 CPU ranks (gloo): the exact top-k across shards at every step of a run and on constructed
tensors, resume at the same and at another number of ranks, SIGTERM on one rank, and a run launched by
torchrun whose directory every other command reads."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from dist_launch import STEPS, launch_worker, small_config, torchrun, train_args
from sparseformer.checkpoint import MODEL_FILE, OPTIM_FILE, checkpoint_file, read_state
from sparseformer.cli import main
from sparseformer.runfiles import load_tensors, read_metrics
from sparseformer.train import train


@pytest.fixture(scope="module")
def fsdp(dist_env, tmp_path_factory):
    """One launch of 2 ranks: the per-step check, the constructed selections, a whole FSDP run, a run that
    rank 0 stops with SIGTERM at step 3 (a copy of it at step 3 is resumed here by one process, the run
    itself by the ranks), and the FSDP resume of a one-process run stopped at step 3."""
    root = tmp_path_factory.mktemp("fsdp")
    cfg = small_config(dist_env)
    c = cfg.to_dict()
    r = {name: root / name for name in ("check.json", "selection.json", "whole", "stopped", "to_one", "from_one",
                                        "single")}
    train(cfg, r["from_one"], progress=False, grad_accum=2, max_steps=3)
    train(cfg, r["single"], progress=False, grad_accum=2)
    launch_worker(dist_env, 2, [
        {"kind": "fsdp_check", "out": str(r["check.json"]), "steps": 5},
        {"kind": "selection", "out": str(r["selection.json"]), "cases": 40},
        {"kind": "train", "config": c, "out": str(r["whole"]), "dist": "fsdp"},
        {"kind": "train", "config": c, "out": str(r["stopped"]), "dist": "fsdp", "faults": {"0": "sigterm@step#3"}},
        {"kind": "copy", "src": str(r["stopped"]), "dst": str(r["to_one"])},
        {"kind": "train", "config": c, "out": str(r["stopped"]), "dist": "fsdp", "resume": True},
        {"kind": "train", "config": c, "out": str(r["from_one"]), "dist": "fsdp", "resume": True},
    ], "fsdp_jobs")
    r["to_one_step"] = read_state(r["to_one"])["step"]
    train(cfg, r["to_one"], progress=False, grad_accum=2, resume=True)
    return r


def test_every_step_keeps_what_one_process_keeps_on_the_gathered_weights(fsdp):
    report = json.loads(fsdp["check.json"].read_text())
    assert report and all(row["equal"] for row in report), [row for row in report if not row["equal"]][:3]
    names = {row["name"] for row in report}
    shapes = {row["name"]: row["shape"] for row in report}
    assert any(shapes[n][0] % 2 for n in names)                          # first dimensions that do not divide
    assert any(row["protect"] and row["protect"][1] == "cols" for row in report)   # column protection
    straddling = [row for row in report if min(row["tied_at_threshold"]) > 0]
    assert straddling, "no tie group at the threshold spanned both shards"
    whats = {what for row in report for _, what, _ in row["calls"]}
    assert "tie counts" in whats and "column protection" in whats     # both cross-rank paths were exercised
    for step in {row["step"] for row in report}:                      # one all-reduce per pass for all tensors:
        rows = [row for row in report if row["step"] == step]         # the first carries 2050 int64 per tensor
        first = [(kind, b) for kind, what, b in rows[0]["calls"] if what == "histograms, pass 1"]
        assert first == [("all_reduce", 8 * 2050 * len(rows))]


def test_constructed_selections_equal_the_single_process_projection(fsdp):
    data = json.loads(fsdp["selection.json"].read_text())
    bad = [r for r in data["results"] if not r["equal"]]
    assert not bad and len(data["results"]) == 47, bad
    kinds = [kind for kind, _, _ in data["calls"]]
    assert kinds.count("all_reduce") <= 3               # one all-reduce per pass for all 47 tensors together


def test_fsdp_resume_is_exact_and_sigterm_on_one_rank_stops_both(fsdp):
    assert fsdp["to_one_step"] == 3                      # the copy was taken at the SIGTERM's checkpoint
    assert checkpoint_file(fsdp["stopped"], MODEL_FILE).read_bytes() == \
        checkpoint_file(fsdp["whole"], MODEL_FILE).read_bytes()
    (a, ma), (b, mb) = (load_tensors(checkpoint_file(fsdp[r], OPTIM_FILE)) for r in ("stopped", "whole"))
    assert ma == mb and a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_fsdp_against_one_process_and_across_rank_counts(fsdp):
    """FSDP2 differs from one process only in the rounding of the gradient-RMS scale (a sum of per-shard
    norms; docs/distributed.md), so losses agree closely and the resumed runs stay close too."""
    single = [r["loss"] for r in read_metrics(fsdp["single"])]
    for run in ("whole", "to_one", "from_one"):
        losses = [r["loss"] for r in read_metrics(fsdp[run])]
        assert [r["step"] for r in read_metrics(fsdp[run])] == list(range(1, STEPS + 1)), run
        assert all(a == pytest.approx(b, rel=0.02) for a, b in zip(losses, single)), (run, losses, single)
    weights = load_file(str(checkpoint_file(fsdp["to_one"], MODEL_FILE)))
    for name, k in read_state(fsdp["to_one"])["ks"].items():
        assert int(torch.count_nonzero(weights[name])) == k, name


def test_torchrun_fsdp_run_is_read_by_the_other_commands(dist_env, tmp_path):
    out = tmp_path / "run"
    res = torchrun(dist_env, 2, train_args(dist_env, out, "--dist", "fsdp", "--grad-accum", "2", "--set",
                                           "train.batch_size=8", "--json"))
    summary = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and summary[0]["step"] == STEPS            # rank 0 prints, once
    runner = CliRunner()
    info = runner.invoke(main, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    sparse = [t for t in json.loads(info.output)["tensors"] if t["k"] is not None]
    assert sparse and all(t["nonzero"] == t["k"] for t in sparse)
    r = runner.invoke(main, ["sample", str(out), "--prompt", "def ", "-n", "4"])
    assert r.exit_code == 0 and r.output.startswith("def "), r.output
    r = runner.invoke(main, ["eval", str(out), "--tasks", "single_double_quote", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export-official", str(out), "--out", str(tmp_path / "official")])
    assert r.exit_code == 0, r.output
    assert len(read_metrics(out)) == STEPS
