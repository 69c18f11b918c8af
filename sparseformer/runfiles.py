"""The plain files of a run directory: JSON, metrics rows, config, tokenizer and safetensors files.

Readers raise CheckpointError naming the file when it is missing, truncated or corrupt (one clear line for
every command that reads runs); writers go through the package's one atomic write and raise WriteError
naming the file when it cannot be written. The checkpoint sets themselves are in checkpoint.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .data._atomic import atomic_write, atomic_write_text
from .errors import CheckpointError, ConfigError, DataError, WriteError

CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE = "config.json", "tokenizer.json", "metrics.jsonl"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (WriteError naming `path` when it cannot be written)."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(cpu, str(tmp), metadata=metadata)
        except SafetensorError as e:          # its I/O errors (a full disk) are not OSErrors
            raise OSError(str(e).splitlines()[0] if str(e) else "safetensors could not write") from None

    atomic_write(path, write)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file; CheckpointError when it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {path.parent} a run directory?")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}); retrain or restore it") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError naming the file when it is missing, unreadable or not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {path.parent} a run directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = str(e) if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({why}); restore it or retrain with --force") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is corrupt (a JSON object was expected); restore it or retrain with --force")
    return data


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl ([] when absent). A torn last line (the start of a row: the process died
    while appending it) is dropped; any other line that is not a JSON object with a step raises
    CheckpointError naming the file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}); delete it or restore it") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row")
        except ValueError:
            if i == len(lines) and _torn_row(line):             # the tail of an append the process died in
                break
            raise CheckpointError(f"{path} is corrupt at line {i}; delete it or restore it") from None
        rows.append(row)
    return rows


def _torn_row(line: str) -> bool:
    """Whether `line` can be the start of a row append_metrics wrote (json.dumps puts "step" first)."""
    head = '{"step": '
    return line.startswith(head) or head.startswith(line)


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the metric rows past `step` (a resumed run logs them again) and a torn last line."""
    if (Path(run_dir) / METRICS_FILE).is_file():
        keep = [r for r in read_metrics(run_dir) if r["step"] <= step]
        atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in keep))


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, cfg.to_json() + "\n")


def load_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); train one with "
                              f"`sparseformer train --out {run_dir}`")
    try:
        return RunConfig.from_dict(read_json(path))
    except (ConfigError, TypeError, ValueError) as e:        # valid JSON, but not a config
        raise CheckpointError(f"{path} is not a valid run config: {str(e).splitlines()[0]}") from None


def load_tokenizer(run_dir: Path):
    """The run's tokenizer, or None when it has no tokenizer.json; CheckpointError when that is corrupt."""
    path = Path(run_dir) / TOKENIZER_FILE
    if not path.is_file():
        return None
    from .data.tokenizer import Tokenizer
    try:
        return Tokenizer.from_json_str(path.read_text(encoding="utf-8"))
    except (DataError, ValueError, KeyError, TypeError, OSError) as e:    # UnicodeDecodeError is a ValueError
        why = str(e).splitlines()[0] if isinstance(e, DataError) else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({why}); restore it") from None


def config_difference(run_dir: Path, want: RunConfig, ignore: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """The first setting (a dotted key such as "train.lr") in which the run saved in `run_dir` differs from
    `want`, as (key, saved value, wanted value); None when they agree. `preset`, `version` and `ignore` never count."""
    have = json.loads(json.dumps(load_config(run_dir).to_dict()))
    wanted = json.loads(json.dumps(want.to_dict()))
    skip = {"preset", "version", *ignore}
    for key in _flat_keys(wanted):
        if key not in skip and _dotted(have, key) != _dotted(wanted, key):
            return key, _dotted(have, key), _dotted(wanted, key)
    return None


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _dotted(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
