"""Per-node mean activations over pretraining tokens (docs/pruning.md), cached in the run directory.

Means are taken at every mask site over all tokens and positions of the unpruned model, after the site's
AbsTopK (the hook points sit there), so a mean-ablated node sees the value it takes "on average" on the
pretraining distribution. `compute_means` takes any iterable of token batches, so it does not depend on
the data layer; `run_means` feeds it pretraining batches and caches the result as RUN/means.safetensors,
keyed by the model step, the number of tokens and the sequence length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import atomic_save_tensors, load_tensors
from ..data.for_config import load_dataset
from ..errors import CheckpointError
from ..hooks import record
from .sites import mask_sites

log = logging.getLogger(__name__)

MEANS_FILE = "means.safetensors"


@torch.no_grad()
def compute_means(model: torch.nn.Module, batches: Iterable[Tensor], sites: Iterable[str]) -> dict[str, Tensor]:
    """Mean activation per channel at each site over every token of `batches` (int64 [B, T] each)."""
    sites = list(sites)
    sums: dict[str, Tensor] = {}
    count = 0
    device = next(model.parameters()).device
    for idx in batches:
        idx = idx.to(device)
        with record(model, sites) as rec:
            model(idx)
        for s in sites:
            x = rec[s].double().reshape(-1, rec[s].shape[-1])
            sums[s] = sums.get(s, 0) + x.sum(0)
        count += idx.numel()
    if count == 0:
        raise ValueError("compute_means: no tokens given")
    return {s: (sums[s] / count).float() for s in sites}


def pretraining_batches(run, n_tokens: int, seq_len: int, batch_size: int = 16, seed: int = 1234) -> Iterator[Tensor]:
    """Token batches from the run's pretraining corpus (train split) totalling at least n_tokens."""
    dataset = load_dataset(run.config, run.tokenizer)
    seq_len = min(seq_len, run.config.model.block_size)
    n_batches = max(1, -(-n_tokens // (batch_size * seq_len)))
    for step in range(n_batches):
        x, _ = dataset.get_batch("train", batch_size, seq_len, step=step, seed=seed)
        yield x


def run_means(run, *, n_tokens: int = 32768, seq_len: int | None = None, recompute: bool = False) -> dict[str, Tensor]:
    """The run's per-node means, from RUN/means.safetensors when it matches (step, n_tokens, seq_len),
    else computed from pretraining batches and saved there atomically."""
    seq_len = seq_len or run.config.train.seq_len
    key = {"step": str(run.step), "n_tokens": str(n_tokens), "seq_len": str(seq_len)}
    path = Path(run.path) / MEANS_FILE
    sites = mask_sites(run.config.model)
    if path.is_file() and not recompute:
        try:
            tensors, meta = load_tensors(path)
        except CheckpointError as e:
            log.warning("ignoring %s: %s", path, e)
        else:
            if all(meta.get(k) == v for k, v in key.items()) and set(sites) <= set(tensors):
                return {s: tensors[s] for s in sites}
            log.info("%s is stale (%s); recomputing", path, meta)
    log.info("computing means over %d pretraining tokens", n_tokens)
    means = compute_means(run.model, pretraining_batches(run, n_tokens, seq_len), sites)
    atomic_save_tensors(means, path, key)
    return means
