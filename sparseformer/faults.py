"""Fault injection for the tests of interruption and crash safety (docs/reproducibility.md).

SPARSEFORMER_FAULT="ACTION@POINT[#N]" makes the process fail at the N-th time (default 1) it reaches POINT:
- POINT: a file name ("model.safetensors", "optim.safetensors", "state.json", "checkpoint.json", ...): the
  file's bytes are in its temp name and it is not renamed into place yet; "step": inside a training step,
  between backward and the optimizer step; "val": between two validation batches; "switch": a checkpoint
  has just become the current one and the previous one is not removed yet.
- ACTION: "sigint" (the process sends itself SIGINT, as Ctrl-C does), "sigterm" (SIGTERM, as a job scheduler
  or torchrun sends), "kill" (SIGKILL: it dies on the spot),
  "truncate-kill" (file points: the temp file is cut to half its size, then SIGKILL, which is what dying
  in the middle of the write leaves), "enospc" (the OSError a full disk raises).
Without the variable (the normal case) a point costs one environment lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "SPARSEFORMER_FAULT"
ACTIONS = ("sigint", "sigterm", "kill", "truncate-kill", "enospc")

_seen: dict[str, int] = {}
_spec_seen: str | None = None


def _parse(spec: str) -> tuple[str, str, int]:
    action, _, rest = spec.partition("@")
    point, _, nth = rest.partition("#")
    if action not in ACTIONS or not point or (nth and not nth.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: want ACTION@POINT[#N] with ACTION one of {ACTIONS}")
    return action, point, int(nth or 1)


def point(name: str, path: str | Path | None = None) -> None:
    """Reach the fault point `name` (for file points, `path` is the temp file holding the bytes)."""
    global _spec_seen
    spec = os.environ.get(ENV)
    if not spec:
        return
    if spec != _spec_seen:                      # a new spec (tests set it per run): count afresh
        _spec_seen = spec
        _seen.clear()
    action, target, nth = _parse(spec)
    if name != target:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != nth:
        return
    if action in ("sigint", "sigterm"):
        os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path or name))
    else:
        if action == "truncate-kill" and path is not None:
            os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
