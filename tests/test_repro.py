"""Reproducibility to the bit across runs and CPU thread counts, and resume after any interruption.

Training runs here are subprocesses of the `sparseformer` CLI: the test process pins one thread (conftest.py),
and the interruptions (SIGINT, SIGKILL) must hit a real process. They are made at fixed points of the code
through SPARSEFORMER_FAULT (sparseformer/faults.py), never with timers. The model is the tiny preset cut down
with --set (one layer, d_model 64, 4 x 32 tokens a step) but with its 2048-token vocabulary and bigram table,
whose gradient is what thread scheduling changed.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparseformer.checkpoint import CHECKPOINTS_DIR, MODEL_FILE, checkpoint_file, load_run, read_state
from sparseformer.errors import CheckpointError

STEPS = 6
SMALL = ["model.n_layer=1", "model.d_model=64", "model.n_head=4", "model.d_mlp=256", "model.block_size=32",
         "train.batch_size=4", "train.seq_len=32", "train.log_every=1", "train.eval_every=2", "train.ckpt_every=3",
         "train.eval_batches=2", "data.val_frac=0.2"]
SNIPPET = textwrap.dedent('''
    def add(a, b):
        """Return the sum of a and b."""
        return a + b

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    for i in range(10):
        print("value", i, 'x', {"k": [i, i * 2]})
    ''')


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The corpus, a shared token cache, and the environment of every training subprocess."""
    root = tmp_path_factory.mktemp("repro")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"mod{i}.py").write_text(SNIPPET.replace("add", f"add{i}").replace("10", str(i + 3)) * 4)
    base = {k: v for k, v in os.environ.items() if k not in ("SPARSEFORMER_FAULT", "OMP_NUM_THREADS",
                                                           "MKL_NUM_THREADS")}
    base["SPARSEFORMER_CACHE"] = str(root / "cache")
    return {"corpus": corpus, "env": base, "root": root}


def sparseformer(env, *args, threads=2, fault=None, check=True, cache=None):
    e = dict(env["env"], OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
             RAYON_NUM_THREADS=str(threads))          # the tokenizer trainer's threads
    if cache is not None:
        e["SPARSEFORMER_CACHE"] = str(cache)
    if fault:
        e["SPARSEFORMER_FAULT"] = fault
    res = subprocess.run([sys.executable, "-c", "from sparseformer.cli import main; main()", *map(str, args)],
                         env=e, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def train(env, out, *extra, threads=2, fault=None, check=True, cache=None):
    sets = [a for s in SMALL for a in ("--set", s)]
    return sparseformer(env, "train", "--preset", "tiny", "--data", env["corpus"], "--out", out, "--steps", STEPS,
                        "--device", "cpu", "--quiet", *sets, *extra, threads=threads, fault=fault, check=check,
                        cache=cache)


def model_digest(run: Path) -> str:
    return hashlib.sha256(checkpoint_file(run, MODEL_FILE).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted run at 2 threads: (run directory, digest of its model.safetensors)."""
    out = env["root"] / "reference"
    train(env, out)
    return out, model_digest(out)


def test_same_bytes_run_after_run_and_at_1_and_2_threads(env, reference):
    again = env["root"] / "again"
    one = env["root"] / "one_thread"
    train(env, again, threads=2)
    train(env, one, threads=1, cache=env["root"] / "cache-1")   # tokenizer and token shards made afresh too
    assert read_state(reference[0])["step"] == STEPS
    assert model_digest(again) == reference[1]
    assert model_digest(one) == reference[1]
    assert (one / "tokenizer.json").read_bytes() == (reference[0] / "tokenizer.json").read_bytes()


def _loss_rows(run: Path) -> list:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("val_loss")) for r in rows]


@pytest.mark.parametrize("fault, stopped_at", [
    ("sigint@step#2", 2),            # Ctrl-C in the middle of step 2: it finishes, saves step 2 and stops
    ("sigint@val#3", 4),             # ... during the validation after step 4 (the 3rd validation batch)
    ("sigint@state.json#1", 3),      # ... while the checkpoint of step 3 is being written
])
def test_sigint_then_resume_ends_bit_identical(env, reference, fault, stopped_at):
    out = env["root"] / f"int-{fault.replace('@', '-').replace('#', '-')}"
    first = train(env, out, "--json", fault=fault)
    assert json.loads(first.stdout)["interrupted"], first.stdout
    assert read_state(out)["step"] == stopped_at
    train(env, out, "--resume")
    assert model_digest(out) == reference[1]
    assert _loss_rows(out) == _loss_rows(reference[0])        # every metric row once, the same numbers


@pytest.mark.parametrize("fault, current", [
    ("kill@model.safetensors#1", None),          # dies writing the first checkpoint: there is none yet
    ("truncate-kill@model.safetensors#2", 3),    # dies half-way through the model file of step 6
    ("kill@optim.safetensors#2", 3),             # after file 1 of 3 of step 6
    ("kill@checkpoint.json#2", 3),               # all of step 6 written, not switched yet
    ("kill@switch#2", 6),                        # switched to step 6, step 3 not removed yet
])
def test_kill_during_a_checkpoint_leaves_a_complete_one(env, reference, fault, current):
    out = env["root"] / f"kill-{fault.replace('@', '-').replace('#', '-')}"
    res = train(env, out, fault=fault, check=False)
    assert res.returncode == -9, res.stderr                 # SIGKILL: nothing after the fault point ran
    if current is None:
        with pytest.raises(CheckpointError, match="has not saved a model yet"):
            load_run(out)
    else:
        assert load_run(out).step == current and read_state(out)["step"] == current
    train(env, out, "--resume")
    assert model_digest(out) == reference[1]
    assert _loss_rows(out) == _loss_rows(reference[0])
    if current != STEPS:                     # the next checkpoint removed what the interrupted write left
        assert len(list((out / CHECKPOINTS_DIR).iterdir())) == 1
