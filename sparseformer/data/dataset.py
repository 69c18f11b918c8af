"""TokenDataset: the cached uint16 token streams of one corpus, and stateless batching.

A batch is a pure function of (split, step, seed): window offsets come from a torch.Generator seeded
with a hash of those three values, so a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .tokenizer import Tokenizer

SPLITS = ("train", "val")
FORMAT_VERSION = 1


@dataclass
class DatasetStats:
    """Corpus and split sizes of a prepared dataset."""

    source: str = ""
    files_read: int = 0
    files_skipped: int = 0  # not UTF-8
    files_empty: int = 0
    documents: int = 0
    bytes: int = 0
    split_mode: str = "by_document"  # or "tail" (a one-document corpus: the last val_frac of its tokens)
    train_documents: int = 0
    val_documents: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    skipped_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetStats:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _batch_seed(seed: int, step: int, split: str) -> int:
    """A 63-bit generator seed from (seed, step, split), stable across processes and platforms."""
    digest = hashlib.blake2b(f"sparseformer-batch:{seed}:{step}:{split}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _open_tokens(path: Path, n_tokens: int) -> np.ndarray:
    if not path.is_file() or path.stat().st_size != 2 * n_tokens:
        raise DataError(f"cached token file '{path}' is missing or truncated; delete '{path.parent}' to rebuild")
    if n_tokens == 0:
        return np.zeros(0, dtype=np.uint16)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(n_tokens,))


class TokenDataset:
    """Train and val token streams (uint16, documents separated by EOT) plus their tokenizer."""

    def __init__(self, tokenizer: Tokenizer, train_tokens: np.ndarray, val_tokens: np.ndarray,
                 stats: DatasetStats | None = None, path: Path | None = None):
        self.tokenizer = tokenizer
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.stats = stats if stats is not None else DatasetStats(train_tokens=len(train_tokens),
                                                                  val_tokens=len(val_tokens))
        self.path = path  # the cache directory it was opened from, if any

    @classmethod
    def open(cls, path: str | Path) -> TokenDataset:
        """Open a dataset directory written by prepare_dataset (memory-maps the tokens)."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            version, stats = meta["version"], DatasetStats.from_dict(meta["stats"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"cached dataset '{path}' is unreadable ({type(e).__name__}); delete it to rebuild") \
                from None
        if version != FORMAT_VERSION:
            raise DataError(f"cached dataset '{path}' has format {version}, expected {FORMAT_VERSION}; "
                            "delete it to rebuild")
        tokenizer = Tokenizer.load(path / "tokenizer.json")
        train = _open_tokens(path / "train.bin", stats.train_tokens)
        val = _open_tokens(path / "val.bin", stats.val_tokens)
        return cls(tokenizer, train, val, stats, path)

    def tokens(self, split: str) -> np.ndarray:
        """The token stream of "train" or "val"."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.train_tokens if split == "train" else self.val_tokens

    def _checked(self, split: str, batch_size: int, seq_len: int) -> np.ndarray:
        tokens = self.tokens(split)
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if len(tokens) < seq_len + 1:
            raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}: "
                            "the corpus is too small; use a larger corpus, a shorter context or a larger val_frac")
        return tokens

    @staticmethod
    def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int, device) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)  # [B, T+1]
        window = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
        x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()  # [B, T] each
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y

    def get_batch(self, split: str, batch_size: int, seq_len: int, step: int, seed: int,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Random windows: x, y int64 [B, T], y[:, t] = x[:, t+1]. Pure function of (split, step, seed)."""
        tokens = self._checked(split, batch_size, seq_len)
        gen = torch.Generator().manual_seed(_batch_seed(seed, step, split))
        starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=gen).numpy()
        return self._windows(tokens, starts, seq_len, device)

    def val_batches(self, batch_size: int, seq_len: int, n_batches: int,
                    device: torch.device | str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """n_batches fixed val batches: batch_size*n_batches windows evenly spaced over the whole val
        stream (they overlap only when the stream is shorter than that many windows)."""
        tokens = self._checked("val", batch_size, seq_len)
        n_windows = batch_size * n_batches
        last = len(tokens) - seq_len - 1
        starts = (np.arange(n_windows, dtype=np.int64) * last) // max(n_windows - 1, 1)
        for b in range(n_batches):
            yield self._windows(tokens, starts[b * batch_size:(b + 1) * batch_size], seq_len, device)

    def __repr__(self) -> str:
        return (f"TokenDataset(train_tokens={len(self.train_tokens)}, val_tokens={len(self.val_tokens)}, "
                f"vocab_size={self.tokenizer.vocab_size})")
