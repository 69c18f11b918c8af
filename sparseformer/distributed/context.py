"""One process's place in a training run: single process, or one rank of many started by torchrun.

`init_context(mode, device, backend)` reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT: what torchrun sets), checks the request, starts the process group (NCCL for
CUDA, gloo for the CPU) and binds each rank to its GPU. The `DistContext` it returns is what the training
loop asks everything rank-related: who writes files (`on_main`), the sums of a few floats over ranks
(`all_sum`), and how a failed collective becomes one clear line (`PeerLost`). A single process gets the
same object with world_size 1, whose methods do no communication. docs/distributed.md describes the whole.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import ConfigError, SparseformerError

log = logging.getLogger(__name__)

MODES = ("single", "ddp", "fsdp")
BACKENDS = ("nccl", "gloo")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "SPARSEFORMER_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0       # a collective that waits longer than this ends the run (a hung or lost rank)

T = TypeVar("T")


class PeerLost(SparseformerError):
    """A collective failed: another rank crashed, was killed, or the network between ranks failed."""


@dataclass
class DistContext:
    """Where this process stands: mode ("single", "ddp" or "fsdp"), rank, world size, its device."""

    mode: str
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False        # this context started the process group (and so ends it)
    launched: bool = False          # started by a launcher, which forwards the signals it receives

    @property
    def distributed(self) -> bool:
        return self.mode != "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes the run directory and logs."""
        return self.rank == 0

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and give every rank its result; a SparseformerError it raises is raised
        on every rank with the same message (so no rank waits for a rank that gave up)."""
        if not self.distributed:
            return fn()
        outcome: list[Any] = [None]
        error = None
        if self.is_main:
            try:
                outcome[0] = ("ok", fn())
            except SparseformerError as e:
                error = e
                outcome[0] = ("error", type(e), str(e))
        with self.collective("sharing rank 0's result"):
            torch.distributed.broadcast_object_list(outcome, src=0)
        if error is not None:
            raise error
        if outcome[0][0] == "error":
            raise outcome[0][1](outcome[0][2])
        return outcome[0][1]

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then (once it succeeded) on the other ranks: for work that fills a cache
        the others then read, such as tokenising the corpus."""
        if not self.distributed:
            return fn()
        mine: list[T] = []
        self.on_main(lambda: mine.append(fn()))          # shares the outcome, not the (large) result
        return mine[0] if self.is_main else fn()

    def all_sum(self, values: list[float]) -> list[float]:
        """The float64 sums of `values` over all ranks (the values themselves in one process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        with self.collective("summing the step's loss"):
            torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            with self.collective("waiting for the other ranks"):
                torch.distributed.barrier()

    @property
    def comm_device(self) -> torch.device:
        """Where tensors for this backend's collectives live (NCCL takes CUDA tensors only)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def collective(self, what: str) -> "_Collective":
        """Context manager: a collective failure inside becomes PeerLost naming `what`."""
        return _Collective(self, what)

    def lost_contact(self, err: BaseException) -> PeerLost | None:
        """`err` as PeerLost when it is a failed collective (raised by DDP or FSDP2 inside forward or
        backward, or by `collective`); None for any other error."""
        if isinstance(err, PeerLost):
            return err
        if self.distributed and is_collective_failure(err):
            return PeerLost(f"rank {self.rank} of {self.world_size} lost contact with another rank "
                            f"({failure_reason(err)})")
        return None

    def close(self) -> None:
        """End the process group if this context started it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.owns_group = False


class _Collective:
    def __init__(self, ctx: DistContext, what: str):
        self.ctx, self.what = ctx, what

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None and self.ctx.distributed and is_collective_failure(err):
            raise PeerLost(f"rank {self.ctx.rank} of {self.ctx.world_size} lost contact with another rank while "
                           f"{self.what} ({failure_reason(err)})") from err
        return False


# what gloo and NCCL say when a peer is gone or silent (their other errors, e.g. a bad tensor size, are bugs)
_FAILURE_WORDS = re.compile(r"connection (closed|reset|refused)|broken pipe|timed out|timeout|socket|"
                            r"nccl (error|communicator)|watchdog", re.IGNORECASE)


def all_gather_rows(out: torch.Tensor, local: torch.Tensor) -> None:
    """torch.distributed's all-gather into one tensor: `out` holds every rank's `local` along dim 0 (the
    layout gloo and NCCL both take). all_gather_single is its name from torch 2.13 on."""
    gather = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor
    gather(out, local)


def is_collective_failure(err: BaseException) -> bool:
    """Whether `err` is a failed collective (a lost peer, a timeout) rather than a bug or a user error."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and bool(_FAILURE_WORDS.search(str(err)))


def failure_reason(err: BaseException) -> str:
    """The backend's message cut to its first sentence, without the source path gloo puts first."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


def launcher_env() -> dict[str, str] | None:
    """torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) when all are set."""
    if not all(os.environ.get(v) for v in LAUNCH_VARS):
        return None
    return {v: os.environ[v] for v in (*LAUNCH_VARS, "LOCAL_RANK") if v in os.environ}


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def planned_world_size(mode: str | None) -> int:
    """The number of ranks `init_context(mode, ...)` will give, read before any process group starts (so a
    bad batch size is reported at once, not after waiting for the other ranks)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() if mode != "single" else 1
    env = launcher_env()
    if mode == "single" or env is None:
        return 1
    try:
        return max(1, int(env["WORLD_SIZE"]))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={env['WORLD_SIZE']!r} is not a number of ranks") from None


def init_context(mode: str | None, device: torch.device, backend: str | None = None) -> DistContext:
    """The DistContext of this process, starting the process group when it is one rank of many.

    mode: None (one rank of many with "ddp" when launched by torchrun or in an initialised process group,
    else a single process), "single", "ddp" or "fsdp". device: the training device; a CUDA rank trains on
    cuda:LOCAL_RANK. backend: "nccl" or "gloo" (default: NCCL for CUDA, gloo for the CPU)."""
    env = launcher_env()
    group_ready = torch.distributed.is_available() and torch.distributed.is_initialized()
    if mode is None:
        mode = "ddp" if env is not None or group_ready else "single"
    if mode not in MODES:
        raise ConfigError(f"--dist {mode!r} is unknown; choose 'ddp' or 'fsdp'")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"--dist-backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if mode == "single":
        if backend is not None:
            raise ConfigError(f"--dist-backend {backend} needs a distributed run (--dist ddp or fsdp under torchrun)")
        return DistContext("single", device)
    if env is None and not group_ready:
        raise ConfigError(f"--dist {mode} needs one process per rank started by torchrun (RANK, WORLD_SIZE, "
                          f"MASTER_ADDR and MASTER_PORT are not set): run `torchrun --nproc_per_node N -m "
                          f"sparseformer train ... --dist {mode}`")
    if group_ready:
        backend = backend or torch.distributed.get_backend()
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"--dist-backend nccl needs CUDA tensors but training runs on {device}; use "
                          f"--dist-backend gloo (the CPU default) or --device cuda")
    local_rank = int((env or {}).get("LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s); start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not group_ready:
        wait = timeout_s()
        try:
            torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=wait))
        except (RuntimeError, ValueError) as e:
            if not is_collective_failure(e):
                raise
            raise PeerLost(f"could not reach the other ranks at {env['MASTER_ADDR']}:{env['MASTER_PORT']} "
                           f"({failure_reason(e)})") from e
        owns = True
    ctx = DistContext(mode, device, rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                      local_rank=local_rank, backend=backend, owns_group=owns, launched=env is not None)
    if ctx.is_main:
        log.info("distributed: %s over %d ranks, backend %s", mode, ctx.world_size, backend)
    return ctx
