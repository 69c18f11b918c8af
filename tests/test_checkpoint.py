"""Checkpoint sets: a failing write keeps the previous checkpoint, corrupted run files are one clear line for
every command that reads runs, older run directories still load, the one atomic write."""

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from sparseformer.checkpoint import (CHECKPOINTS_DIR, METRICS_FILE, MODEL_FILE, OPTIM_FILE, POINTER_FILE,
                                     STATE_FILE, atomic_save_tensors, checkpoint_dir, checkpoint_file, load_run,
                                     read_metrics, read_state)
from sparseformer.cli import main
from sparseformer.config import DataConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from sparseformer.data._atomic import FILE_MODE, atomic_write_text
from sparseformer.data.corpus import stdlib_dir
from sparseformer.errors import WriteError
from sparseformer.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few stdlib files: enough text for a 2048-token BPE that can spell the tasks' prompts."""
    root = tmp_path_factory.mktemp("ckpt_corpus")
    size = 0
    for path in sorted(stdlib_dir().glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        (root / path.name).write_text(text, encoding="utf-8")
        size += len(text)
        if size > 300_000:
            break
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SPARSEFORMER_FAULT", raising=False)


def micro(corpus, steps=8) -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=1, d_model=32, n_head=2, d_head=16, d_mlp=64, block_size=64, afrac=0.5),
        sparsity=SparsityConfig(weight_density=1 / 4, protect_per_neuron=1, anneal_start=0.0, anneal_end=0.5),
        train=TrainConfig(steps=steps, batch_size=2, seq_len=32, log_every=1, eval_every=4, ckpt_every=4,
                          eval_batches=1, device="cpu"),
        data=DataConfig(source=str(corpus), val_frac=0.2),
    ).validate()


def one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    return lines[0]


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("SPARSEFORMER_FAULT", "enospc@optim.safetensors#2")      # the checkpoint of step 8
    with pytest.raises(WriteError) as err:
        train(micro(corpus), out, progress=False)
    msg = str(err.value)
    assert "No space left on device" in msg and "optim.safetensors" in msg and str(out) in msg
    assert "the previous checkpoint (step 4) is still the current one" in msg
    assert load_run(out).step == 4 and read_state(out)["step"] == 4
    assert [p.name for p in (out / CHECKPOINTS_DIR).iterdir()] == [checkpoint_dir(out).name]   # no leftovers
    monkeypatch.delenv("SPARSEFORMER_FAULT")
    assert train(micro(corpus), out, resume=True, progress=False).step == 8
    full = tmp_path / "full"
    train(micro(corpus), full, progress=False)
    assert checkpoint_file(out, MODEL_FILE).read_bytes() == checkpoint_file(full, MODEL_FILE).read_bytes()


def test_disk_full_is_one_line_naming_the_file(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(corpus), "--out", str(out), "--steps", "4", "--device", "cpu", "--quiet",
            "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
            "--set", "model.d_mlp=64", "--set", "train.batch_size=2", "--set", "train.seq_len=32",
            "--set", "model.block_size=32", "--set", "sparsity.protect_per_neuron=1", "--set", "data.val_frac=0.2"]
    res = CliRunner().invoke(main, args, env={"SPARSEFORMER_FAULT": "enospc@model.safetensors"})
    line = one_error_line(res)
    assert "cannot write" in line and "model.safetensors: No space left on device" in line
    assert "no checkpoint of this run was saved before" in line
    assert not list((out / CHECKPOINTS_DIR).iterdir()) and not (out / POINTER_FILE).exists()


def test_second_ctrl_c_during_a_checkpoint_discards_it(corpus, tmp_path, monkeypatch):
    import sparseformer.checkpoint as ckpt
    out = tmp_path / "run"
    train(micro(corpus), out, progress=False, max_steps=4)
    before = checkpoint_dir(out)
    model = load_run(out).model

    def interrupted(path, text):
        raise KeyboardInterrupt                   # what _StopFlag raises on a second Ctrl-C

    monkeypatch.setattr(ckpt, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(out, model, None, 5, {}, finished=False)
    assert checkpoint_dir(out) == before and read_state(out)["step"] == 4
    assert [p.name for p in (out / CHECKPOINTS_DIR).iterdir()] == [before.name]


def test_atomic_write_failure_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    assert os.stat(path).st_mode & 0o777 == FILE_MODE
    monkeypatch.setenv("SPARSEFORMER_FAULT", "enospc@f.json")
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_older_run_layout_loads_and_resumes_into_the_new_one(corpus, tmp_path):
    out = tmp_path / "run"
    train(micro(corpus), out, progress=False, max_steps=4)
    ref = tmp_path / "ref"
    train(micro(corpus), ref, progress=False)
    where = checkpoint_dir(out)                  # rewrite as the older layout: the set in the run directory
    for name in (MODEL_FILE, OPTIM_FILE, STATE_FILE):
        shutil.move(where / name, out / name)
    shutil.rmtree(out / CHECKPOINTS_DIR)
    (out / POINTER_FILE).unlink()
    assert checkpoint_dir(out) == out and load_run(out).step == 4
    train(micro(corpus), out, resume=True, progress=False)
    assert not any((out / n).exists() for n in (MODEL_FILE, OPTIM_FILE, STATE_FILE))
    assert checkpoint_file(out, MODEL_FILE).read_bytes() == checkpoint_file(ref, MODEL_FILE).read_bytes()


def test_torn_last_metrics_row_is_dropped_but_other_damage_is_an_error(tmp_path):
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / METRICS_FILE).write_text(text + '{"step": 3, "lo')
    assert read_metrics(tmp_path) == rows
    (tmp_path / METRICS_FILE).write_text(text + "garbage")
    with pytest.raises(Exception, match=f"{tmp_path / METRICS_FILE} is corrupt at line 3"):
        read_metrics(tmp_path)


# -- every command that reads runs, against every damaged file ------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    """A micro run stopped at step 4 of 8 (so that --resume has work to do)."""
    out = tmp_path_factory.mktemp("ckpt_runs") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    train(micro(corpus), out, progress=False, max_steps=4)
    mp.undo()
    return out


COMMANDS = {
    "info": lambda run, tmp: ["info", run],
    "sample": lambda run, tmp: ["sample", run, "--prompt", "def ", "-n", "2"],
    "eval": lambda run, tmp: ["eval", run, "--tasks", "single_double_quote", "-n", "2", "--device", "cpu"],
    "prune": lambda run, tmp: ["prune", run, "--task", "single_double_quote", "--target-loss", "50", "--steps", "1",
                               "--train-pairs", "4", "--eval-pairs", "2", "--device", "cpu", "--quiet"],
    "export-official": lambda run, tmp: ["export-official", run, "--out", tmp / "exported", "--force"],
    "train --resume": lambda run, tmp: ["train", "--out", run, "--resume", "--quiet"],
}
FILES = ("config.json", "tokenizer.json", POINTER_FILE, STATE_FILE, MODEL_FILE, OPTIM_FILE, METRICS_FILE)
ONLY_RESUME_READS = (OPTIM_FILE, METRICS_FILE)


def damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(bytes((b * 7 + 3) % 256 for b in data))      # garbage of the same length


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", FILES)
def test_damaged_run_file_is_one_line_naming_it(run_dir, tmp_path, command, name):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    path = run / name if name in ("config.json", "tokenizer.json", POINTER_FILE, METRICS_FILE) \
        else checkpoint_file(run, name)
    for how in ("truncated", "garbage"):
        damage(path, how)
        if name == METRICS_FILE and how == "truncated":
            continue                              # a torn last row is what dying mid-append leaves: dropped
        res = CliRunner().invoke(main, [str(a) for a in COMMANDS[command](run, tmp_path)])
        if name in ONLY_RESUME_READS and command != "train --resume":
            assert res.exit_code == 0, res.output
        else:
            assert str(path) in one_error_line(res), (how, res.output)
        shutil.rmtree(run)
        shutil.copytree(run_dir, run)


def test_damaged_circuit_file_is_one_line(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "circuits").mkdir()
    (run / "circuits" / "x.json").write_bytes(b"\xff\xfe garbage")
    assert "x.json" in one_error_line(CliRunner().invoke(main, ["circuits", str(run)]))


@pytest.mark.parametrize("text", ['{"model": 5}', '{"model": {"n_layer": "two"}}', '{"nonsense": {}}', "[1, 2]"])
def test_config_that_is_json_but_not_a_config_is_one_line(run_dir, tmp_path, text):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "config.json").write_text(text)
    assert str(run / "config.json") in one_error_line(CliRunner().invoke(main, ["info", str(run)]))


def test_checkpoint_pointer_to_a_missing_set_is_one_line(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(checkpoint_dir(run))
    line = one_error_line(CliRunner().invoke(main, ["info", str(run)]))
    assert POINTER_FILE in line and "does not exist" in line


def test_saved_tensors_round_trip_with_metadata(tmp_path):
    from sparseformer.checkpoint import load_tensors
    t = {"a": torch.arange(6.0).view(2, 3)}
    atomic_save_tensors(t, tmp_path / "t.safetensors", {"step": "3"})
    back, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(back["a"], t["a"]) and meta == {"step": "3"}
