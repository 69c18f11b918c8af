"""prepare_dataset and TokenDataset: cache, split by file, stream layout, batches."""

import json

import numpy as np
import pytest
import torch
from synthpy import python_text, write_corpus

from sparseformer.data import Tokenizer, TokenDataset, prepare_dataset
from sparseformer.data import shards as shards_mod
from sparseformer.data.corpus import load_corpus
from sparseformer.errors import ConfigError, DataError

VOCAB = 512


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "src", n_files=24, file_bytes=4000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def dataset(corpus, cache):
    return prepare_dataset(corpus, cache, vocab_size=VOCAB, val_frac=0.1, seed=0)


def _meta(ds):
    return json.loads((ds.path / "meta.json").read_text())


def _docs_of(ds, split):
    """Decode a split's stream back into documents (the stream is EOT, doc, EOT, doc, ...)."""
    tokens = ds.tokens(split)
    assert tokens[0] == ds.tokenizer.eot_id
    cuts = np.flatnonzero(tokens == ds.tokenizer.eot_id).tolist() + [len(tokens)]
    return [ds.tokenizer.decode(tokens[a + 1:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def test_layout_and_stats(dataset, corpus):
    ds = dataset
    assert isinstance(ds.train_tokens, np.memmap) and ds.train_tokens.dtype == np.uint16
    assert (ds.tokenizer.vocab_size, ds.tokenizer.eot_id) == (VOCAB, VOCAB - 1)
    assert {p.name for p in ds.path.iterdir()} == {"meta.json", "tokenizer.json", "train.bin", "val.bin"}
    st = ds.stats
    assert (st.documents, st.files_skipped, st.split_mode) == (24, 0, "by_document")
    assert st.train_documents + st.val_documents == 24 and st.val_documents >= 1
    assert (st.train_tokens, st.val_tokens) == (len(ds.train_tokens), len(ds.val_tokens))
    assert 0.03 < st.val_tokens / (st.train_tokens + st.val_tokens) < 0.3


def test_val_split_is_disjoint_by_file_and_streams_decode_to_documents(dataset, corpus):
    meta = _meta(dataset)
    train, val = meta["train_names"], meta["val_names"]
    assert not set(train) & set(val)
    docs, _ = load_corpus(corpus)
    assert sorted(train + val) == sorted(d.name for d in docs)
    text = {d.name: d.text for d in docs}
    assert _docs_of(dataset, "train") == [text[n] for n in train]
    assert _docs_of(dataset, "val") == [text[n] for n in val]


def test_split_depends_on_seed_only(corpus, tmp_path):
    docs, _ = load_corpus(corpus)
    splits = {seed: shards_mod.split_documents(docs, 0.1, seed) for seed in range(4)}
    assert shards_mod.split_documents(docs, 0.1, 0) == splits[0]
    assert len({tuple(v) for _, v in splits.values()}) > 1


def test_second_call_uses_cache_without_retokenising(dataset, corpus, cache, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("retokenised")

    monkeypatch.setattr(shards_mod, "_write_stream", boom)
    monkeypatch.setattr(shards_mod, "load_corpus", boom)
    monkeypatch.setattr(Tokenizer, "train", boom)
    again = prepare_dataset(corpus, cache, vocab_size=VOCAB, val_frac=0.1, seed=0)
    assert again.path == dataset.path
    assert np.array_equal(again.train_tokens, dataset.train_tokens)
    assert [p.name for p in cache.iterdir()] == [dataset.path.name]  # no temp dirs left


def test_cache_key_changes_with_inputs(dataset, corpus, cache, tmp_path):
    other = prepare_dataset(corpus, cache, vocab_size=VOCAB, val_frac=0.2, seed=0)
    assert other.path != dataset.path
    given = prepare_dataset(corpus, tmp_path, tokenizer=dataset.tokenizer, val_frac=0.1, seed=0)
    assert given.tokenizer.sha256() == dataset.tokenizer.sha256()
    assert np.array_equal(given.train_tokens, dataset.train_tokens)  # same tokenizer, same split


def test_edited_corpus_is_retokenised(tmp_path):
    src = write_corpus(tmp_path / "src", n_files=4, file_bytes=2000)
    first = prepare_dataset(src, tmp_path / "cache", vocab_size=300, val_frac=0.25)
    (src / "mod00.py").write_text(python_text(3000, seed=99))
    second = prepare_dataset(src, tmp_path / "cache", vocab_size=300, val_frac=0.25)
    assert second.path != first.path


def test_corrupt_cache_is_rebuilt(tmp_path):
    src = write_corpus(tmp_path / "src", n_files=4, file_bytes=2000)
    first = prepare_dataset(src, tmp_path / "cache", vocab_size=300, val_frac=0.25)
    n = len(first.train_tokens)
    del first
    with open(tmp_path / "cache" / next((tmp_path / "cache").iterdir()).name / "train.bin", "r+b") as f:
        f.truncate(10)
    again = prepare_dataset(src, tmp_path / "cache", vocab_size=300, val_frac=0.25)
    assert len(again.train_tokens) == n
    with pytest.raises(DataError, match="unreadable"):
        TokenDataset.open(tmp_path / "cache")


def test_get_batch_shapes_shift_and_determinism(dataset):
    x, y = dataset.get_batch("train", 4, 16, step=7, seed=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = dataset.get_batch("train", 4, 16, step=7, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, dataset.get_batch("train", 4, 16, step=8, seed=3)[0])
    assert not torch.equal(x, dataset.get_batch("train", 4, 16, step=7, seed=4)[0])
    stream = torch.from_numpy(np.asarray(dataset.train_tokens, dtype=np.int64))
    windows = stream.unfold(0, 17, 1)  # every window of the stream
    for row_x, row_y in zip(x, y):
        assert (windows == torch.cat([row_x, row_y[-1:]])).all(dim=1).any()


def test_val_batches_fixed_and_inside_val(dataset):
    a = list(dataset.val_batches(2, 8, n_batches=3))
    b = list(dataset.val_batches(2, 8, n_batches=3))
    assert len(a) == 3 and all(x.shape == (2, 8) for x, _ in a)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    val = np.asarray(dataset.val_tokens, dtype=np.int64)
    assert torch.equal(a[0][0][0], torch.from_numpy(val[:8]))  # first window starts the stream
    assert torch.equal(a[-1][1][-1], torch.from_numpy(val[-8:]))  # last window ends it


def test_split_too_short_for_context(dataset):
    with pytest.raises(DataError, match="too small"):
        dataset.get_batch("val", 1, len(dataset.val_tokens), step=0, seed=0)
    with pytest.raises(DataError, match="too small"):
        next(dataset.val_batches(1, len(dataset.val_tokens), 1))
    with pytest.raises(ValueError, match="split"):
        dataset.get_batch("test", 1, 8, step=0, seed=0)


def test_single_document_corpus_splits_its_tail(tmp_path):
    path = tmp_path / "one.py"
    path.write_text(python_text(6000))
    ds = prepare_dataset(path, tmp_path / "cache", vocab_size=300, val_frac=0.1)
    assert ds.stats.split_mode == "tail" and ds.stats.val_tokens > 0
    joined = np.concatenate([ds.train_tokens, ds.val_tokens])
    assert ds.tokenizer.decode(joined[1:]) == path.read_text()


def test_no_val_split(tmp_path):
    src = write_corpus(tmp_path / "src", n_files=3, file_bytes=1500)
    ds = prepare_dataset(src, tmp_path / "cache", vocab_size=300, val_frac=0.0)
    assert len(ds.val_tokens) == 0 and ds.stats.train_documents == 3
    with pytest.raises(DataError, match="val split has 0 tokens"):
        ds.get_batch("val", 1, 8, step=0, seed=0)


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_dataset(tmp_path / "missing", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        prepare_dataset(tmp_path / "empty", tmp_path / "cache")
    with pytest.raises(ConfigError, match="val_frac"):
        prepare_dataset(tmp_path / "empty", tmp_path / "cache", val_frac=0.9)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
