"""Bridging a dense run: train a sparse model coupled to it, and load a bridged run back.

    from sparseformer.bridges import bridge, load_bridged
    cfg = get_preset("tiny")                                          # the sparse model to train
    result = bridge("runs/tiny-dense", "runs/tiny-bridged", cfg)      # -> BridgeResult, with the metrics table
    b = load_bridged("runs/tiny-bridged")                             # sparse run, dense run, bridges

The sparse model is trained from scratch on the dense run's data with the dense run's tokenizer; it must have
the same depth (the bridges pair the layers one to one) and vocabulary. Its run directory is a run like any
other (prune, eval, the viewer read it) plus bridge.json and, in each checkpoint set, bridges.safetensors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoint as ckpt
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..train import TrainResult, train
from .config import BridgeInfo, BridgeSettings, check_dense_unchanged, model_sha256
from .modules import Bridges, bridge_sites
from .objective import BRIDGES_MODULE, BridgeObjective
from .table import final_metrics


@dataclass
class BridgeResult:
    train: TrainResult
    info: BridgeInfo
    metrics: dict | None            # the last validation row's bridge metrics (see table.final_metrics)


@dataclass
class Bridged:
    """A loaded bridged run: the sparse run, its dense run (both models in eval mode) and the bridges."""
    sparse: ckpt.Run
    dense: ckpt.Run
    bridges: Bridges
    info: BridgeInfo


def check_compatible(dense: RunConfig, sparse: RunConfig, dense_run: Path) -> None:
    """ConfigError naming the mismatch when a sparse model of config `sparse` cannot be bridged to `dense`."""
    dm, sm = dense.model, sparse.model
    if dm.n_layer != sm.n_layer:
        raise ConfigError(f"the dense run {dense_run} has {dm.n_layer} layers and the sparse model {sm.n_layer}; "
                          f"bridges pair the layers one to one: use --set model.n_layer={dm.n_layer}")
    if dm.vocab_size != sm.vocab_size:
        raise ConfigError(f"the dense run {dense_run} has a vocabulary of {dm.vocab_size} tokens and the sparse "
                          f"model {sm.vocab_size}; they must share the tokenizer: use --set "
                          f"model.vocab_size={dm.vocab_size}")
    if sparse.train.seq_len > dm.block_size:
        raise ConfigError(f"train.seq_len={sparse.train.seq_len} is longer than the dense model's context "
                          f"({dm.block_size} tokens); use --set train.seq_len={dm.block_size}")


def _same_tokenizer(a, b) -> bool:
    return a is not None and b is not None and a.to_json_str() == b.to_json_str()


def encoder_k(afrac: float, d_sparse: int) -> int | None:
    """Entries an encoder keeps per token: int(afrac * d_sparse), or None (no AbsTopK) at afrac 1."""
    return None if afrac >= 1 else max(1, int(afrac * d_sparse))


def bridge(dense_run: str | Path, out: str | Path, cfg: RunConfig | None = None,
           settings: BridgeSettings | None = None, *, resume: bool = False, force: bool = False,
           progress: bool = True, max_steps: int | None = None) -> BridgeResult:
    """Train (or resume) a sparse model of config `cfg` in `out`, coupled to the frozen model of `dense_run`.
    On resume the config and settings saved in `out` are used and `cfg`, `settings` are ignored."""
    dense_run, out = Path(dense_run), Path(out)
    dense = ckpt.load_run(dense_run)
    if dense.tokenizer is None:
        raise CheckpointError(f"the dense run {dense_run} has no tokenizer.json; the sparse model must be "
                              f"trained with the dense model's tokenizer")
    if resume:
        info = BridgeInfo.read(out)
        check_dense_unchanged(info, dense_run)
        cfg = ckpt.load_config(out)
        if not _same_tokenizer(ckpt.load_tokenizer(out), dense.tokenizer):
            raise ConfigError(f"{out}'s tokenizer differs from the dense run {dense_run}'s; resume it with the "
                              f"dense run it was bridged to")
    else:
        cfg = copy.deepcopy(cfg if cfg is not None else dense.config)
        cfg.data = copy.deepcopy(dense.config.data)          # the dense run's corpus and split
        cfg.validate()
        settings = (settings or BridgeSettings()).validate()
        if settings.encoder_afrac is None:
            settings.encoder_afrac = cfg.model.afrac
        info = BridgeInfo(dense_run=str(dense_run.resolve()), dense_step=dense.step,
                          dense_model_sha256=model_sha256(dense_run), sites=bridge_sites(cfg.model.n_layer),
                          d_dense=dense.config.model.d_model, d_sparse=cfg.model.d_model,
                          encoder_k=encoder_k(settings.encoder_afrac, cfg.model.d_model), settings=settings)
    check_compatible(dense.config, cfg, dense_run)
    bridges = Bridges(info.sites, info.d_dense, info.d_sparse, info.encoder_k)
    objective = BridgeObjective(dense.model, bridges, info, ckpt.resolve_device(cfg.train.device))
    result = train(cfg, out, resume=resume, force=force, progress=progress, max_steps=max_steps,
                   tokenizer=dense.tokenizer, objective=objective)
    return BridgeResult(train=result, info=info, metrics=final_metrics(out))


def load_bridged(run_dir: str | Path, device: str = "cpu") -> Bridged:
    """Load a bridged run, its dense run (which must be unchanged) and the bridges of its current checkpoint."""
    run_dir = Path(run_dir)
    info = BridgeInfo.read(run_dir)
    sparse = ckpt.load_run(run_dir, device=device)
    dense_run = Path(info.dense_run)
    if not dense_run.is_dir():
        raise CheckpointError(f"{run_dir} was bridged to the dense run {dense_run}, which does not exist any more")
    check_dense_unchanged(info, dense_run)
    dense = ckpt.load_run(dense_run, device=device)
    bridges = Bridges(info.sites, info.d_dense, info.d_sparse, info.encoder_k)
    ckpt.load_module_weights(run_dir, {BRIDGES_MODULE: bridges}, expect_step=sparse.step)
    bridges.to(ckpt.resolve_device(device)).eval()
    for p in list(dense.model.parameters()) + list(sparse.model.parameters()) + list(bridges.parameters()):
        p.requires_grad_(False)
    return Bridged(sparse=sparse, dense=dense, bridges=bridges, info=info)
