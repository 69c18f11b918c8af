"""The tokenised corpus of a run config, from the shared token cache (training and pruning both read it)."""

from __future__ import annotations

import os
from pathlib import Path

from .shards import prepare_dataset


def cache_dir() -> Path:
    """Where tokenised corpora are cached (SPARSEFORMER_CACHE, default ~/.cache/sparseformer)."""
    return Path(os.environ.get("SPARSEFORMER_CACHE", Path.home() / ".cache" / "sparseformer"))


def load_dataset(cfg, tokenizer=None):
    """The TokenDataset of `cfg.data.source` (tokenised once and cached), split as `cfg` says."""
    return prepare_dataset(cfg.data.source, cache_dir() / "data", tokenizer=tokenizer,
                           vocab_size=cfg.model.vocab_size, val_frac=cfg.data.val_frac,
                           seed=cfg.train.seed if cfg.data.seed is None else cfg.data.seed,
                           max_tokenizer_bytes=cfg.data.max_tokenizer_bytes)
