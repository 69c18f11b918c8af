"""A killed rank ends the other with one clear line and the run resumes; bad input is one line each; the
rank-sliced micro-batches cover the global batch once."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from dist_launch import STEPS, launch_cli, small_config, train_args
from sparseformer.checkpoint import MODEL_FILE, checkpoint_file, read_state
from sparseformer.cli import main
from sparseformer.distributed import check_batch, micro_batches
from sparseformer.errors import ConfigError
from sparseformer.runfiles import read_metrics
from sparseformer.train import train


def test_a_killed_rank_ends_the_other_with_one_line_and_the_run_resumes(dist_env, tmp_path):
    """Rank 1 dies (SIGKILL) in its fourth step, after the checkpoint of step 3: rank 0 stops with one line
    (gloo sees the closed connection at once; SPARSEFORMER_DIST_TIMEOUT=60 bounds a silent peer, and the
    launch's own time limit catches a hang). Relaunched without --dist (DDP under a launcher), the run ends
    with the bytes of one process with --grad-accum 2."""
    out = tmp_path / "run"
    ranks = launch_cli(dist_env, 2, train_args(dist_env, out, "--dist", "ddp"), faults={1: "kill@step#4"},
                       expect_ok=False)
    assert ranks.returncodes[1] == -9 and ranks.returncodes[0] == 1, ranks.report()
    errors = [line for line in ranks.outputs[0].splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in ranks.outputs[0], ranks.outputs[0]
    assert "rank 0 of 2 lost contact with another rank" in errors[0]
    assert "the last checkpoint (step 3)" in errors[0] and "--resume" in errors[0]
    assert read_state(out)["step"] == 3
    launch_cli(dist_env, 2, train_args(dist_env, out, "--resume"))
    ref = tmp_path / "ref"
    train(small_config(dist_env), ref, progress=False, grad_accum=2)
    assert checkpoint_file(out, MODEL_FILE).read_bytes() == checkpoint_file(ref, MODEL_FILE).read_bytes()
    assert [r["step"] for r in read_metrics(out)] == list(range(1, STEPS + 1))


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_distributed_input_is_one_line_each(dist_env, tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    line = _one_error_line(runner.invoke(main, train_args(dist_env, tmp_path / "a", "--dist", "fsdp")))
    assert "--dist fsdp needs one process per rank started by torchrun" in line
    line = _one_error_line(runner.invoke(main, train_args(dist_env, tmp_path / "b", "--grad-accum", "3")))
    assert "train.batch_size=4 does not divide into 1 rank x --grad-accum 3 = 3 micro-batches" in line
    line = _one_error_line(runner.invoke(main, train_args(dist_env, tmp_path / "c", "--grad-accum", "0")))
    assert "--grad-accum 0 must be a positive integer" in line
    # under a launcher of 3 ranks (reported before any rank waits for the others)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    line = _one_error_line(runner.invoke(main, train_args(dist_env, tmp_path / "d")))
    assert "train.batch_size=4 does not divide into 3 ranks x --grad-accum 1 = 3 micro-batches" in line
    assert "multiple of 3 (e.g. 6)" in line
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = _one_error_line(runner.invoke(main, train_args(dist_env, tmp_path / "e", "--dist-backend", "nccl")))
    assert "--dist-backend nccl needs CUDA tensors but training runs on cpu" in line
    assert not any((tmp_path / d).exists() for d in "abcde")


@pytest.mark.parametrize("world,accum", [(1, 1), (1, 4), (2, 1), (2, 2), (4, 1)])
def test_micro_batches_cover_the_global_batch_once_in_order(world, accum):
    x = torch.arange(8 * 3).view(8, 3)
    pieces = [m for r in range(world) for m in micro_batches(x, x + 100, r, world, accum)]
    assert len(pieces) == world * accum
    assert torch.equal(torch.cat([p[0] for p in pieces]), x) and torch.equal(torch.cat([p[1] for p in pieces]), x + 100)
    # one process with grad_accum world*accum runs the same pieces as `world` ranks with `accum`
    single = micro_batches(x, x + 100, 0, 1, world * accum)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(single, pieces))


def test_check_batch_names_the_numbers():
    assert check_batch(12, 2, 3) == 2
    with pytest.raises(ConfigError, match=r"batch_size=10 does not divide into 2 ranks x --grad-accum 3 = 6 "
                                          r"micro-batches; use a batch size that is a multiple of 6 \(e.g. 12\)"):
        check_batch(10, 2, 3)


def test_failed_collectives_become_one_line_and_other_errors_pass_through():
    from sparseformer.distributed import DistContext, PeerLost
    from sparseformer.distributed.context import failure_reason
    ctx = DistContext("ddp", torch.device("cpu"), rank=1, world_size=4)
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:4498. This is typically caused by a remote worker crashing. GLHF!")
    assert failure_reason(gloo) == "Connection closed by peer [127.0.0.1]:4498"
    lost = ctx.lost_contact(gloo)
    assert isinstance(lost, PeerLost) and str(lost) == ("rank 1 of 4 lost contact with another rank (Connection "
                                                        "closed by peer [127.0.0.1]:4498)")
    for bug in ("mat1 and mat2 shapes cannot be multiplied",
                "ProcessGroupGloo::allgather: invalid tensor size at index 0 (expected (1280), got (1, 1280))"):
        assert ctx.lost_contact(RuntimeError(bug)) is None                  # a bug stays a bug
    assert DistContext("single", torch.device("cpu")).lost_contact(gloo) is None
    with pytest.raises(PeerLost, match="while summing the loss"):
        with ctx.collective("summing the loss"):
            raise gloo
