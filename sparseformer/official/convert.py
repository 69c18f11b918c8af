"""Official model directory <-> run directory: import, in-memory load, export.

An imported run directory is an ordinary one (config.json, a checkpoint set at step 0, tokenizer.json when
the tokenizer files were found) plus official.json: the original beeg_config.json and each tensor's stored
layout and dtype, so that export writes the same file back bit for bit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import checkpoint as ckpt
from ..config import ModelConfig, RunConfig, SparsityConfig, TrainConfig
from ..errors import CheckpointError, DataError
from ..model import GPT, param_kind
from .config import CONFIG_FILE, from_model_config, to_model_config
from .datagym import ENCODER_FILE, MERGES_FILE, has_datagym_files, read_datagym, write_datagym
from .weights import (WEIGHTS_FILE, WPE, check_tensors, densify, from_official_name, is_all_zero, read_weights,
                      to_official)

logger = logging.getLogger(__name__)

META_FILE = "official.json"
META_VERSION = 1
_RUN_FILES = ckpt.RUN_FILES + (META_FILE,)


@dataclass
class OfficialModel:
    """An official checkpoint read into memory."""
    source: Path
    raw_config: dict[str, Any]              # beeg_config.json as written
    config: RunConfig                       # preset "official"; sparsity k = current nonzero counts
    model: GPT                              # float32, eval mode
    tokenizer: Any                          # Tokenizer or None
    layouts: dict[str, dict[str, str]]      # official key -> {"layout", "dtype"} as stored
    ks: dict[str, int]                      # sparse tensor -> nonzero count


def read_official(src: str | Path, tokenizer_dir: str | Path | None = None) -> OfficialModel:
    """Read and check an official model directory (beeg_config.json + final_model.pt)."""
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a directory; give the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (src / name).is_file():
            raise CheckpointError(f"{src} has no {name}; an official model directory holds {CONFIG_FILE} "
                                  f"and {WEIGHTS_FILE}")
    try:
        raw = json.loads((src / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{src / CONFIG_FILE} is not valid JSON ({e})") from None
    mcfg = to_model_config(raw, where=str(src / CONFIG_FILE))
    where = str(src / WEIGHTS_FILE)
    dense, layouts = densify(read_weights(src / WEIGHTS_FILE), where)
    check_tensors(dense, mcfg, where, CONFIG_FILE)
    wpe = dense.pop(WPE)
    mcfg.learned_pos_emb = not is_all_zero(wpe)
    if mcfg.learned_pos_emb:
        dense[WPE] = wpe
    model = _build(mcfg, {from_official_name(k): v for k, v in dense.items()})
    tokenizer = _find_tokenizer(src, tokenizer_dir, mcfg)
    ks = nonzero_ks(model)
    return OfficialModel(src.resolve(), raw, _run_config(mcfg, model, ks), model, tokenizer, layouts, ks)


def _build(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> GPT:
    with torch.device("meta"):  # skip the random init: every tensor comes from the checkpoint
        model = GPT(cfg)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.float().eval()


def _find_tokenizer(src: Path, tokenizer_dir, cfg: ModelConfig):
    if tokenizer_dir is not None:
        directory = Path(tokenizer_dir)
        if not has_datagym_files(directory):
            raise DataError(f"tokenizer directory {directory} has no {ENCODER_FILE} + {MERGES_FILE}; give the "
                            f"folder that holds both")
    elif has_datagym_files(src):
        directory = src
    else:
        logger.info("%s has no %s + %s: no tokenizer (logits and kernels work, task commands need one)",
                    src, ENCODER_FILE, MERGES_FILE)
        return None
    tok = read_datagym(directory, eot_id=cfg.vocab_size - 1)   # tinypython: 2047 = vocab_size - 1
    if tok.vocab_size > cfg.vocab_size:
        raise DataError(f"the tokenizer in {directory} has {tok.vocab_size} ids but the model only "
                        f"{cfg.vocab_size}; give the tokenizer this model was trained with")
    return tok


def nonzero_ks(model: nn.Module) -> dict[str, int]:
    """Nonzero count of every tensor of a sparse kind: its top-k budget in an imported run."""
    return {n: int(torch.count_nonzero(p)) for n, p in model.named_parameters() if param_kind(n) is not None}


def _run_config(mcfg: ModelConfig, model: nn.Module, ks: dict[str, int]) -> RunConfig:
    """Sparsity fractions as found in the weights, so `info` and further training see the real budgets."""
    counts: dict[str, list[int]] = {"weight": [0, 0], "other": [0, 0]}
    for n, p in model.named_parameters():
        if n in ks:
            c = counts["weight" if param_kind(n) == "weight" else "other"]
            c[0] += ks[n]
            c[1] += p.numel()
    frac = {k: max(nz, 1) / max(total, 1) for k, (nz, total) in counts.items()}
    dense = all(nz == total for nz, total in counts.values())
    return RunConfig(
        model=mcfg,
        sparsity=SparsityConfig(dense=dense, weight_density=frac["weight"], embed_density=frac["other"]),
        train=TrainConfig(seq_len=min(256, mcfg.block_size)),
        preset="official",
    ).validate()


def load_official(path: str | Path, tokenizer_dir: str | Path | None = None, device: str = "cpu") -> ckpt.Run:
    """Open an official model directory in memory, as a `Run` like `checkpoint.load_run` returns."""
    m = read_official(path, tokenizer_dir)
    m.model.to(ckpt.resolve_device(device))
    state = {"step": 0, "ks": m.ks, "finished": True, "imported_from": str(m.source)}
    return ckpt.Run(path=m.source, config=m.config, model=m.model, tokenizer=m.tokenizer, step=0, state=state)


def _prepare_dir(out: Path, names, force: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise CheckpointError(f"{out} already holds {existing[0]}; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for n in existing:
        (out / n).unlink()


def import_official(src: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None,
                    force: bool = False) -> OfficialModel:
    """Convert an official model directory into the run directory `out`; returns what was read."""
    m = read_official(src, tokenizer_dir)
    out = Path(out)
    _prepare_dir(out, _RUN_FILES, force)
    ckpt.save_config(out, m.config)
    if m.tokenizer is not None:
        m.tokenizer.save(out / ckpt.TOKENIZER_FILE)
    meta = {"version": META_VERSION, "source": str(m.source), "config": m.raw_config, "tensors": m.layouts}
    ckpt.atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    ckpt.save_checkpoint(out, m.model, None, 0, m.ks, finished=True, extra={"imported_from": str(m.source)})
    logger.info("imported %s into %s", m.source, out)
    return m


def _read_meta(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is corrupt; delete it to export with a fresh {CONFIG_FILE}") from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        raise CheckpointError(f"{path} has an unknown format; delete it to export with a fresh {CONFIG_FILE}")
    return meta


def _official_config(meta: dict[str, Any] | None, cfg: ModelConfig) -> dict[str, Any]:
    """The imported beeg_config.json when it still describes the model, else one written from `cfg`."""
    if meta is not None:
        try:
            imported = to_model_config(meta["config"])
            imported.learned_pos_emb = cfg.learned_pos_emb
            if imported == cfg:
                return meta["config"]
        except CheckpointError:
            pass
        logger.warning("the model config changed since import; writing a fresh %s", CONFIG_FILE)
    return from_model_config(cfg)


def export_official(run_dir: str | Path, out: str | Path, mode: str = "original",
                    force: bool = False) -> list[Path]:
    """Write beeg_config.json + final_model.pt (+ encoder.json, vocab.bpe when the run has a tokenizer) to `out`;
    returns the files written.

    mode: "original" (imported layouts, else dense), "dense", or "coo" (sparse tensors as COO where smaller)."""
    run = ckpt.load_run(run_dir)
    meta = _read_meta(Path(run_dir))
    cfg = run.config.model
    raw = _official_config(meta, cfg)
    layouts = meta["tensors"] if meta is not None else None
    state = to_official(run.model.state_dict(), cfg, layouts, mode)
    out = Path(out)
    names = [CONFIG_FILE, WEIGHTS_FILE] + ([ENCODER_FILE, MERGES_FILE] if run.tokenizer is not None else [])
    _prepare_dir(out, names, force)
    _atomic_torch_save(state, out / WEIGHTS_FILE)
    ckpt.atomic_write_text(out / CONFIG_FILE, json.dumps(raw, indent=2) + "\n")
    if run.tokenizer is not None:
        write_datagym(run.tokenizer, out)
    logger.info("exported %s to %s", run_dir, out)
    return [out / n for n in names]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    ckpt.atomic_write(path, lambda tmp: torch.save(obj, tmp))
