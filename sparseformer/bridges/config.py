"""A bridged run's settings and its record of the dense run: bridge.json in the run directory.

    {"version": 1, "dense_run": "/abs/path", "dense_step": 1500, "dense_model_sha256": "...",
     "sites": ["0.resid_in", ...], "d_dense": 128, "d_sparse": 128, "encoder_k": 32,
     "settings": {"encoder_afrac": 0.25, "nmse_weight": 1.0, "kl_weight": 1.0, "kl_sites_per_step": 0}}

The dense model's file hash ties the bridges to the exact dense weights they were trained against: resuming
or steering a bridged run whose dense run has changed since is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import BRIDGE_FILE, MODEL_FILE, checkpoint_file, read_json
from ..errors import CheckpointError, ConfigError

BRIDGE_VERSION = 1


@dataclass
class BridgeSettings:
    """The bridge loss and encoder settings (docs/bridges.md gives the reasons for the defaults)."""
    encoder_afrac: float | None = None   # AbsTopK keep fraction of each encoder; None: the sparse model's afrac
    nmse_weight: float = 1.0             # weight of the sum of NMSE terms over sites and both directions
    kl_weight: float = 1.0               # weight of the sum of KL terms over sites and both directions
    kl_sites_per_step: int = 0           # 0: KL at every site each step; n: n sites per step, taken in turn

    def validate(self) -> BridgeSettings:
        if self.encoder_afrac is not None and not 0 < self.encoder_afrac <= 1:
            raise ConfigError(f"encoder_afrac={self.encoder_afrac} must be in (0, 1] (1 turns AbsTopK off)")
        for name in ("nmse_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not isinstance(self.kl_sites_per_step, int) or self.kl_sites_per_step < 0:
            raise ConfigError(f"kl_sites_per_step={self.kl_sites_per_step!r} must be an integer >= 0 (0: all sites)")
        return self


@dataclass
class BridgeInfo:
    """The content of bridge.json."""
    dense_run: str
    dense_step: int
    dense_model_sha256: str
    sites: list[str]
    d_dense: int
    d_sparse: int
    encoder_k: int | None
    settings: BridgeSettings = field(default_factory=BridgeSettings)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["version"] = BRIDGE_VERSION
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, run_dir: str | Path) -> BridgeInfo:
        """bridge.json of a run; CheckpointError when the run is not a bridged one or the file is damaged."""
        path = Path(run_dir) / BRIDGE_FILE
        if not path.is_file():
            raise CheckpointError(f"{run_dir} is not a bridged run (no {BRIDGE_FILE}); make one with "
                                  f"`sparseformer bridge --dense DENSE_RUN --out {run_dir}`")
        d = read_json(path)
        try:
            if d.pop("version", None) != BRIDGE_VERSION:
                raise ValueError("unknown version")
            d["settings"] = BridgeSettings(**d.get("settings", {})).validate()
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid bridge file ({str(e).splitlines()[0]}); restore it "
                                  f"or bridge again with --force") from None


def model_sha256(run_dir: str | Path) -> str:
    """SHA-256 of a run's current model.safetensors."""
    path = checkpoint_file(Path(run_dir), MODEL_FILE)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def check_dense_unchanged(info: BridgeInfo, dense_run: str | Path) -> None:
    """CheckpointError unless `dense_run` holds the dense weights the bridges were trained against."""
    if model_sha256(dense_run) != info.dense_model_sha256:
        raise CheckpointError(f"the dense run {dense_run} is not the one these bridges were trained against "
                              f"(its model.safetensors changed since step {info.dense_step} was bridged); "
                              f"bridge again with --force")
