"""Bridge runs: the losses fall, resume ends bit-identical, the run directory is a run like any other plus its
bridges, and mismatched or changed dense runs are refused in one line."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from sparseformer.bridges import BridgeInfo, BridgeSettings, bridge, final_metrics, load_bridged, metrics_table
from sparseformer.checkpoint import MODEL_FILE, OPTIM_FILE, checkpoint_file, load_run
from sparseformer.cli import main
from sparseformer.errors import CheckpointError, ConfigError
from sparseformer.runfiles import load_tensors, read_metrics

from .conftest import micro


def test_nmse_and_kl_fall_during_a_short_run(corpus, dense_run, tmp_path):
    out = tmp_path / "b"
    result = bridge(dense_run, out, micro(corpus, steps=24, eval_every=8, ckpt_every=24), progress=False)
    rows = [r for r in read_metrics(out) if "sites" in r]
    assert [r["step"] for r in rows] == [8, 16, 24]

    def mean(row, key):
        return sum(m[key] for m in row["sites"].values()) / len(row["sites"])

    first, last = rows[0], rows[-1]
    for key in ("nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"):
        assert mean(last, key) < 0.8 * mean(first, key), (key, mean(first, key), mean(last, key))
    assert set(last["sites"]) == {"0.resid_in", "0.resid_mid", "1.resid_in", "1.resid_mid"}
    assert result.metrics["step"] == 24 and result.metrics["ce_dense"] == last["ce_dense"]
    table = metrics_table(result.metrics)
    assert table.count("\n| ") == 2 + 4 + 1 and "CE d->s path" in table        # header, rule, 4 sites, mean
    every = read_metrics(out)
    assert len(every) == 24 and all({"ce", "nmse_enc", "nmse_dec", "kl_d2s", "kl_s2d"} <= set(r) for r in every)


def test_resume_ends_bit_identical(corpus, dense_run, tmp_path):
    cfg = micro(corpus, steps=8, eval_every=4, ckpt_every=4)
    settings = BridgeSettings(kl_sites_per_step=1)                # the round robin must resume in step too
    full, part = tmp_path / "full", tmp_path / "part"
    bridge(dense_run, full, cfg, settings, progress=False)
    bridge(dense_run, part, micro(corpus, steps=8, eval_every=4, ckpt_every=4), settings, progress=False,
           max_steps=3)
    assert load_run(part).step == 3
    bridge(dense_run, part, resume=True, progress=False)
    for name in (MODEL_FILE, "bridges.safetensors"):
        assert checkpoint_file(part, name).read_bytes() == checkpoint_file(full, name).read_bytes(), name
    (a, meta_a), (b, meta_b) = (load_tensors(checkpoint_file(r, OPTIM_FILE)) for r in (part, full))
    assert a.keys() == b.keys() and any(k.startswith("bridges.encoders.") for k in a)   # the bridges' moments too
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(meta_a["steps"]) == json.loads(meta_b["steps"])
    assert read_metrics(part) == [{**r, "tokens_per_s": r2["tokens_per_s"]} for r, r2 in
                                  zip(read_metrics(full), read_metrics(part))]
    info = BridgeInfo.read(part)
    assert info.settings.kl_sites_per_step == 1 and info.encoder_k == 16     # afrac 0.5 of d_model 32
    b = load_bridged(part)
    assert b.sparse.step == 8 and b.dense.path == dense_run and b.bridges.sites == info.sites


def test_depth_and_vocabulary_mismatches_are_refused(corpus, dense_run, tmp_path):
    with pytest.raises(ConfigError, match="2 layers and the sparse model 1"):
        bridge(dense_run, tmp_path / "a", micro(corpus, n_layer=1), progress=False)
    cfg = micro(corpus)
    cfg.model.vocab_size = 1024
    with pytest.raises(ConfigError, match="vocabulary of 2048 tokens and the sparse model 1024"):
        bridge(dense_run, tmp_path / "b", cfg, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_changed_dense_run_is_refused(corpus, dense_run, tmp_path):
    dense = tmp_path / "dense"
    shutil.copytree(dense_run, dense)
    out = tmp_path / "b"
    bridge(dense, out, micro(corpus, steps=8), progress=False, max_steps=4)
    model = checkpoint_file(dense, MODEL_FILE)
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not the one these bridges were trained against"):
        bridge(dense, out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="not the one these bridges were trained against"):
        load_bridged(out)


def test_cli_bridge_prints_the_table_and_errors_in_one_line(corpus, dense_run, tmp_path):
    out = tmp_path / "b"
    args = ["bridge", "--dense", str(dense_run), "--out", str(out), "--steps", "4", "--device", "cpu", "--quiet",
            "--set", "model.d_model=32", "--set", "model.n_head=2", "--set", "model.d_mlp=64",
            "--set", "model.block_size=64", "--set", "train.seq_len=32", "--set", "train.batch_size=2",
            "--set", "train.eval_batches=1", "--set", "sparsity.protect_per_neuron=1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "| 1.resid_mid |" in res.output and "NMSE enc d->s" in res.output
    assert (out / "bridge.json").is_file() and final_metrics(out)["step"] == 4
    res = CliRunner().invoke(main, args + ["--json", "--force"])
    assert res.exit_code == 0 and json.loads(res.stdout)["metrics"]["step"] == 4
    again = CliRunner().invoke(main, args)
    lines = [line for line in again.output.splitlines() if line.strip()]
    assert again.exit_code == 1 and len(lines) == 1 and "already holds a run" in lines[0]
    deep = CliRunner().invoke(main, args[:-2] + ["--force", "--set", "model.n_layer=3"])
    lines = [line for line in deep.output.splitlines() if line.strip()]
    assert deep.exit_code == 1 and len(lines) == 1 and "bridges pair the layers one to one" in lines[0]
    plain = CliRunner().invoke(main, ["steer", str(dense_run), "--task", "single_double_quote", "--node",
                                      "0.attn.act_in.1"])
    assert plain.exit_code == 1 and "is not a bridged run" in plain.output


def test_bridge_training_under_several_ranks_is_refused(corpus, dense_run, tmp_path, monkeypatch):
    # the bridges are not wrapped by DDP or FSDP, so their gradients would differ across ranks
    monkeypatch.setattr("sparseformer.train.planned_world_size", lambda mode: 2)
    with pytest.raises(ConfigError, match="runs in one process"):
        bridge(dense_run, tmp_path / "run", micro(corpus), progress=False)
    assert not (tmp_path / "run" / "config.json").exists()
