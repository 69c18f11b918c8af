"""prepare_dataset: corpus -> tokenizer -> uint16 token shards in a cache directory, built once.

Cache layout: `cache_dir/tokens-<key>/` holds tokenizer.json, train.bin, val.bin (raw little-endian
uint16, np.memmap-able) and meta.json. The key hashes the corpus file list with sizes and mtimes, the
tokenizer (its JSON, or the training settings when prepare_dataset trains it), val_frac, seed and the
format version, so a second call with the same inputs only opens the files. The directory is written
under a temp name and renamed into place, so a crash never leaves a half-written cache.

Each split is one stream: EOT, doc, EOT, doc, ... (EOT before every document, so each document,
the first one included, starts right after an EOT). Documents go to val or train whole: the
documents are shuffled with `seed` and taken into val until they hold val_frac of the corpus bytes
(at least one document in val, at least one left in train). A corpus of a single document cannot be
split by document; its last val_frac of tokens becomes val instead (stats.split_mode = "tail").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, WriteError
from ._atomic import atomic_write_text
from .corpus import Document, load_corpus, resolve_source
from .dataset import FORMAT_VERSION, DatasetStats, TokenDataset
from .tokenizer import MAX_VOCAB_SIZE, Tokenizer

logger = logging.getLogger(__name__)

__all__ = ["prepare_dataset", "TokenDataset", "split_documents"]

_CHUNK_BYTES = 4_000_000  # text per encode_batch call


def split_documents(docs: list[Document], val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), each sorted: whole documents, val holding about val_frac of the bytes."""
    n = len(docs)
    if val_frac <= 0 or n < 2:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    sizes = [len(d.text.encode("utf-8")) for d in docs]
    target, held, val = val_frac * sum(sizes), 0, []
    for i in order:
        if held >= target or len(val) == n - 1:
            break
        val.append(i)
        held += sizes[i]
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], sorted(val)


def _tokenizer_sample(docs: list[Document], max_bytes: int, seed: int) -> Iterator[str]:
    """A deterministic sample of at most max_bytes: whole documents in a seeded order, the last one cut
    at a line end."""
    order = list(range(len(docs)))
    random.Random(f"tokenizer-sample:{seed}").shuffle(order)
    budget = max_bytes
    for i in order:
        data = docs[i].text.encode("utf-8")
        if len(data) <= budget:
            budget -= len(data)
            yield docs[i].text
            continue
        cut = data[:budget]
        cut = cut[:cut.rfind(b"\n") + 1] or cut
        yield cut.decode("utf-8", errors="ignore")
        return


def _cache_key(corpus_fp: str, tokenizer: Tokenizer | None, vocab_size: int, max_tokenizer_bytes: int,
               val_frac: float, seed: int) -> str:
    tok = tokenizer.sha256() if tokenizer is not None else f"train:{vocab_size}:{max_tokenizer_bytes}"
    spec = {"format": FORMAT_VERSION, "corpus": corpus_fp, "tokenizer": tok, "val_frac": val_frac, "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _write_stream(path: Path, docs: list[Document], tokenizer: Tokenizer, bar) -> int:
    """Tokenise docs in chunks and append EOT + ids per document to path; returns the token count."""
    eot = np.array([tokenizer.eot_id], dtype=np.uint16)
    n_tokens, start = 0, 0
    with open(path, "wb") as f:
        while start < len(docs):
            end, size = start, 0
            while end < len(docs) and (end == start or size < _CHUNK_BYTES):
                size += len(docs[end].text)
                end += 1
            parts = []
            for ids in tokenizer.encode_batch([d.text for d in docs[start:end]]):
                parts += [eot, np.asarray(ids, dtype=np.uint16)]
            arr = np.concatenate(parts)
            f.write(arr.astype("<u2", copy=False).tobytes())
            n_tokens += len(arr)
            bar.update(size)
            start = end
    return n_tokens


def _check_args(vocab_size: int, val_frac: float, max_tokenizer_bytes: int, tokenizer: Tokenizer | None) -> None:
    if not 0.0 <= val_frac <= 0.5:
        raise ConfigError(f"val_frac={val_frac} is out of range; choose a value in [0, 0.5]")
    if max_tokenizer_bytes < 1:
        raise ConfigError(f"max_tokenizer_bytes={max_tokenizer_bytes} must be positive")
    if tokenizer is not None and tokenizer.vocab_size > MAX_VOCAB_SIZE:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens; token shards hold at most "
                          f"{MAX_VOCAB_SIZE} (uint16)")


def prepare_dataset(source: str | Path | None, cache_dir: str | Path, tokenizer: Tokenizer | None = None,
                    vocab_size: int = 2048, val_frac: float = 0.02, seed: int = 0,
                    max_tokenizer_bytes: int = 4_000_000, *, progress: bool = False) -> TokenDataset:
    """Tokenise `source` once into cached uint16 shards under cache_dir and open them.

    Without `tokenizer`, a `vocab_size` BPE is trained on a seeded sample (<= max_tokenizer_bytes) of
    the train documents. `progress` shows a tqdm bar on stderr while tokenising.
    """
    _check_args(vocab_size, val_frac, max_tokenizer_bytes, tokenizer)
    src = resolve_source(source)
    key = _cache_key(src.fingerprint(), tokenizer, vocab_size, max_tokenizer_bytes, val_frac, seed)
    cache_dir = Path(cache_dir)
    final = cache_dir / f"tokens-{key}"
    if (final / "meta.json").is_file():
        try:
            dataset = TokenDataset.open(final)
            logger.info("data: using cached tokens in %s", final)
            return dataset
        except DataError as e:
            logger.warning("data: %s; rebuilding", e)
            shutil.rmtree(final, ignore_errors=True)

    docs, cstats = load_corpus(src)
    train_idx, val_idx = split_documents(docs, val_frac, seed)
    train_docs, val_docs = [docs[i] for i in train_idx], [docs[i] for i in val_idx]
    if tokenizer is None:
        logger.info("data: training a %d-token BPE on up to %.1f MB", vocab_size, max_tokenizer_bytes / 1e6)
        tokenizer = Tokenizer.train(_tokenizer_sample(train_docs, max_tokenizer_bytes, seed), vocab_size)

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tokens-{key}-"))
    try:
        tokenizer.save(tmp / "tokenizer.json")
        total_chars = sum(len(d.text) for d in docs)
        with tqdm(total=total_chars, unit="char", unit_scale=True, desc="tokenising", disable=not progress) as bar:
            n_train = _write_stream(tmp / "train.bin", train_docs, tokenizer, bar)
            n_val = _write_stream(tmp / "val.bin", val_docs, tokenizer, bar)
        split_mode = "by_document"
        if val_frac > 0 and len(docs) == 1:
            split_mode, n_train, n_val = "tail", *_split_tail(tmp, n_train, val_frac)
        stats = DatasetStats(source=cstats.source, files_read=cstats.files_read, files_skipped=cstats.files_skipped,
                             files_empty=cstats.files_empty, documents=cstats.documents, bytes=cstats.bytes,
                             split_mode=split_mode, train_documents=len(train_docs), val_documents=len(val_docs),
                             train_tokens=n_train, val_tokens=n_val, skipped_names=cstats.skipped_names)
        meta = {"version": FORMAT_VERSION, "key": key, "val_frac": val_frac, "seed": seed,
                "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "dtype": "uint16",
                "tokenizer_sha256": tokenizer.sha256(), "stats": stats.to_dict(),
                "val_names": [d.name for d in val_docs], "train_names": [d.name for d in train_docs]}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # another process published the same key first: use theirs
            if not (final / "meta.json").is_file():
                raise
    except OSError as e:      # a full disk, no permission: one line, naming where
        if isinstance(e, WriteError):
            raise
        raise WriteError(f"cannot write the token cache {e.filename or final}: {e.strerror or e}; free some space "
                         f"or point SPARSEFORMER_CACHE elsewhere") from e
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    logger.info("data: %d train / %d val tokens (%d / %d documents) in %s", n_train, n_val,
                len(train_docs), len(val_docs), final)
    return TokenDataset.open(final)


def _split_tail(tmp: Path, n_train: int, val_frac: float) -> tuple[int, int]:
    """One-document corpus: move the last val_frac of train.bin's tokens into val.bin."""
    tokens = np.fromfile(tmp / "train.bin", dtype="<u2")
    n_val = min(max(1, math.ceil(val_frac * n_train)), n_train - 1) if n_train > 1 else 0
    tokens[: n_train - n_val].tofile(tmp / "train.bin")
    tokens[n_train - n_val:].tofile(tmp / "val.bin")
    return n_train - n_val, n_val
