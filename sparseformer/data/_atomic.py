"""The package's one atomic file write: fill a temp file in the same directory, then rename it over the target.

Readers see either the old file or the whole new one, whatever happens in between (a crash, SIGKILL, a full
disk). Every file the package writes goes through `atomic_write` (or its bytes/text forms); a failed write
raises WriteError naming the file, and leaves neither a temp file nor a changed target behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import faults
from ..errors import WriteError

# mkstemp creates 0600 files; run directories and exports are meant to be shared like any written file
FILE_MODE = 0o644


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Publish `path` atomically: `write(tmp)` fills a temp file next to it, which is synced to disk, given
    FILE_MODE and renamed over `path`. An OSError on the way becomes WriteError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        faults.point(path.name, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of atomic_write_bytes (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside directory `path` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
