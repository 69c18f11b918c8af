"""End-to-end training on a tiny corpus: exact-k projection, resume bit-identity, and bad input."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from sparseformer.checkpoint import checkpoint_file, load_run
from sparseformer.cli import main
from sparseformer.config import ModelConfig, RunConfig, SparsityConfig, TrainConfig, DataConfig
from sparseformer.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from sparseformer.train import train

SNIPPET = textwrap.dedent('''
    def add(a, b):
        """Return the sum."""
        return a + b

    class Point:
        def __init__(self, x, y):
            self.x = x
            self.y = y

    for i in range(10):
        print("value", i, 'x')
    ''')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(24):
        (root / f"mod{i}.py").write_text(SNIPPET.replace("add", f"add{i}").replace("10", str(i + 3)) * 3)
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def micro(corpus: Path, steps: int = 12, **sparsity) -> RunConfig:
    return RunConfig(
        model=ModelConfig(vocab_size=300, n_layer=1, d_model=32, n_head=2, d_head=16, d_mlp=64, block_size=32,
                          afrac=0.5),
        sparsity=SparsityConfig(weight_density=1 / 8, embed_density=1 / 4, protect_per_neuron=1,
                                anneal_start=0.0, anneal_end=0.5, **sparsity),
        train=TrainConfig(steps=steps, batch_size=4, seq_len=16, lr=1e-2, log_every=2, eval_every=4,
                          ckpt_every=4, eval_batches=2, device="cpu"),
        data=DataConfig(source=str(corpus), val_frac=0.2),
    ).validate()


def test_sparse_run_holds_exactly_k_and_logs_metrics(corpus, tmp_path):
    out = tmp_path / "run"
    res = train(micro(corpus), out, progress=False)
    assert res.step == 12
    state = json.loads(checkpoint_file(out, "state.json").read_text())
    weights = load_file(str(checkpoint_file(out, "model.safetensors")))
    assert state["ks"]
    for name, k in state["ks"].items():
        assert int(torch.count_nonzero(weights[name])) == k, name
    w = weights["transformer.h.0.mlp.c_fc.weight"]
    assert state["ks"]["transformer.h.0.mlp.c_fc.weight"] == w.numel() // 8
    assert ((w != 0).sum(1) >= 1).all()                      # protected top-1 per neuron (row)
    cp = weights["transformer.h.0.mlp.c_proj.weight"]
    assert ((cp != 0).sum(0) >= 1).all()                     # ... and per column of c_proj
    assert "transformer.h.0.ln_1.weight" not in state["ks"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "tokens", "loss", "lr", "density"} <= set(rows[0])
    assert any("val_loss" in r for r in rows)
    assert rows[-1]["density"] == pytest.approx(1 / 8)
    for f in ("config.json", "tokenizer.json", "checkpoint.json"):
        assert (out / f).is_file()
    for f in ("model.safetensors", "optim.safetensors", "state.json"):
        assert checkpoint_file(out, f).is_file() and not (out / f).exists()
    assert len(list((out / "checkpoints").iterdir())) == 1      # older sets are removed


def test_dense_switch_keeps_everything(corpus, tmp_path):
    out = tmp_path / "dense"
    train(micro(corpus, dense=True), out, progress=False)
    weights = load_file(str(checkpoint_file(out, "model.safetensors")))
    assert torch.count_nonzero(weights["transformer.h.0.mlp.c_fc.weight"]) == 64 * 32


def test_resume_is_bit_identical(corpus, tmp_path):
    full = tmp_path / "full"
    train(micro(corpus), full, progress=False)
    part = tmp_path / "part"
    first = train(micro(corpus), part, progress=False, max_steps=5)   # stops between checkpoints
    assert first.step == 5
    train(micro(corpus), part, resume=True, progress=False)
    a = load_file(str(checkpoint_file(full, "model.safetensors")))
    b = load_file(str(checkpoint_file(part, "model.safetensors")))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_deterministic_switch_changes_nothing_on_the_cpu(corpus, tmp_path):
    train(micro(corpus), tmp_path / "a", progress=False)
    cfg = micro(corpus)
    cfg.train.deterministic = True
    train(cfg, tmp_path / "b", progress=False)
    assert not torch.are_deterministic_algorithms_enabled()            # switched off again after the run
    a, b = (checkpoint_file(tmp_path / r, "model.safetensors").read_bytes() for r in ("a", "b"))
    assert a == b


def test_existing_run_needs_resume_or_force(corpus, tmp_path):
    out = tmp_path / "run"
    train(micro(corpus, dense=True), out, progress=False, max_steps=1)
    before = checkpoint_file(out, "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume .* or --force"):
        train(micro(corpus), out, progress=False)
    assert checkpoint_file(out, "model.safetensors").read_bytes() == before
    train(micro(corpus), out, progress=False, force=True, max_steps=1)


def test_corrupt_checkpoint_is_one_clear_error(corpus, tmp_path):
    out = tmp_path / "run"
    train(micro(corpus), out, progress=False, max_steps=4)
    path = checkpoint_file(out, "model.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_run(out)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(micro(corpus), out, resume=True, progress=False)


def test_missing_and_empty_corpus(tmp_path):
    cfg = micro(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        train(cfg, tmp_path / "r1", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        train(micro(empty), tmp_path / "r2", progress=False)


def test_non_finite_loss_stops_and_keeps_last_good(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = micro(corpus)
    import sparseformer.train as tr
    real = tr._lm_loss
    calls = {"n": 0}

    def exploding(model, x, y, autocast):
        calls["n"] += 1
        loss = real(model, x, y, autocast)
        return loss * float("nan") if model.training and calls["n"] > 6 else loss

    monkeypatch.setattr(tr, "_lm_loss", exploding)
    with pytest.raises(TrainingDiverged, match=r"at step \d+; the last good checkpoint \(step 4\)"):
        train(cfg, out, progress=False)
    assert json.loads(checkpoint_file(out, "state.json").read_text())["step"] == 4
    load_run(out)  # still loadable


def test_cli_train_info_sample(corpus, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                                  "--steps", "6", "--device", "cpu", "--quiet",
                                  "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
                                  "--set", "model.d_mlp=64", "--set", "model.vocab_size=300",
                                  "--set", "train.batch_size=2", "--set", "train.seq_len=16",
                                  "--set", "model.block_size=32", "--set", "sparsity.protect_per_neuron=1",
                                  "--set", "data.val_frac=0.2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    sparse = [t for t in data["tensors"] if t["k"] is not None]
    assert sparse and all(t["nonzero"] == t["k"] for t in sparse)
    assert {"name", "shape", "numel", "k", "nonzero"} <= set(sparse[0])
    r = CliRunner().invoke(main, ["sample", str(out), "--prompt", "def ", "-n", "5"])
    assert r.exit_code == 0 and r.output.startswith("def ")


def test_cli_bad_inputs_are_one_line(tmp_path, corpus):
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.output.strip().startswith("Error: unknown preset 'huge'")
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(main, ["train", "--density", "2", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "outside (0, 1]" in r.output
    r = runner.invoke(main, ["train", "--set", "model.d_head=7", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "not divisible" in r.output
    r = runner.invoke(main, ["train", "--set", "model.afrac_sites=bogus", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "unknown AbsTopK site" in r.output
    r = runner.invoke(main, ["info", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "does not exist" in r.output
    assert not (tmp_path / "x").exists()


def test_env_command_lists_backends():
    r = CliRunner().invoke(main, ["env", "--json"])
    assert r.exit_code == 0, r.output
    facts = json.loads(r.output)
    assert facts["backends"]["torch"] == "available"
    assert set(facts["backends"]) == {"torch", "triton", "cuda"}
