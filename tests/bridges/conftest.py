"""A micro dense run (2 layers, d_model 32, a real BPE tokenizer on a few stdlib files) to bridge to, and the
micro config of the sparse models trained against it."""

import pytest
import torch

from sparseformer.config import DataConfig, ModelConfig, RunConfig, SparsityConfig, TrainConfig
from sparseformer.data.corpus import stdlib_dir
from sparseformer.model import GPT
from sparseformer.train import train


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """One file of stdlib modules, ~300 kB: enough text for a 2048-token BPE that spells the tasks' prompts."""
    text, files = "", iter(sorted(stdlib_dir().glob("*.py")))
    while len(text) < 300_000:
        text += next(files).read_text(encoding="utf-8", errors="ignore") + "\n"
    path = tmp_path_factory.mktemp("bridge_corpus") / "stdlib_head.py"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SPARSEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "bridge_cache"))
    monkeypatch.delenv("SPARSEFORMER_FAULT", raising=False)


def micro(corpus, steps=8, dense=False, n_layer=2, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(n_layer=n_layer, d_model=32, n_head=2, d_head=16, d_mlp=64, block_size=64, afrac=0.5),
        sparsity=SparsityConfig(dense=dense, weight_density=1 / 4, protect_per_neuron=1, anneal_start=0.0,
                                anneal_end=0.5),
        train=TrainConfig(**{**dict(steps=steps, batch_size=2, seq_len=32, log_every=1, eval_every=4, ckpt_every=4,
                                    eval_batches=1, device="cpu"), **train}),
        data=DataConfig(source=str(corpus), val_frac=0.2),
    ).validate()


@pytest.fixture(scope="session")
def dense_run(corpus, tmp_path_factory):
    """A dense micro run trained for 40 steps (its next-token distribution is far from uniform)."""
    out = tmp_path_factory.mktemp("bridge_dense") / "dense"
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARSEFORMER_CACHE", str(tmp_path_factory.getbasetemp() / "bridge_cache"))
    try:
        train(micro(corpus, steps=40, dense=True, eval_every=40, ckpt_every=40, log_every=40), out, progress=False)
    finally:
        mp.undo()
    return out


def small_gpt(seed: int, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=32, block_size=16, afrac=0.5)
    return GPT(ModelConfig(**{**cfg, **overrides}))
