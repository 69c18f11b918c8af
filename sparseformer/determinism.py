"""Determinism: the CUDA `--deterministic` switch, and a check that operations give the same bytes at any
CPU thread count (docs/reproducibility.md).

On the CPU the training step is deterministic by construction (same seed, data and machine: the same bytes
at 1 or 2 threads, run after run); nothing needs switching on. On CUDA, `deterministic_mode(True)` turns on
torch's deterministic algorithms (an operation without one raises, named, instead of running
nondeterministically) with the cuBLAS workspace setting they need. Our own kernels need no variant: their
only atomics are integer counts (histograms, candidate slots whose order a sort settles), listed in
INTEGER_ATOMICS, and no float is ever accumulated with an atomic.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from .errors import ConfigError

# Every atomic in kernels/ and csrc/ (file: count), all on integers; tests/test_determinism.py keeps this
# list complete, so that a new atomic is looked at (a float one needs a deterministic variant here).
INTEGER_ATOMICS = {
    "kernels/_triton_util.py": 3,         # the projection's histogram and its two counters (Triton)
    "kernels/topk/triton_kernels.py": 1,  # candidate slots; the candidates are sorted before use
    "csrc/sf_common.cuh": 4,              # histogram: shared-memory counts flushed with one atomic per bin
    "csrc/topk_kernels.cu": 2,            # candidate slots, as in Triton
}
CUBLAS_WORKSPACE = ":4096:8"          # what torch's deterministic cuBLAS check asks for


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within the block, only deterministic algorithms run (when `enabled`); the settings are restored after."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)    # read when cuBLAS starts
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    except RuntimeError as e:
        if "deterministic" not in str(e):
            raise
        raise ConfigError(f"--deterministic: {str(e).splitlines()[0]}; run without --deterministic "
                          f"(train.deterministic=false) on this device") from None
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def _clone(x):
    if not isinstance(x, torch.Tensor):
        return x
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices().clone(), x.col_indices().clone(), x.values().clone(),
                                       x.shape, check_invariants=False)
    return x.clone() if x.layout == torch.strided else x


def _raw(x) -> torch.Tensor | None:
    """The bytes of tensor x as a flat tensor (so that -0.0 differs from +0.0 and NaNs compare), or None."""
    if not isinstance(x, torch.Tensor):
        return None
    x = (x if x.layout == torch.strided else x.to_dense()).detach().contiguous().reshape(-1)
    return x if x.dtype == torch.bool else x.view(torch.uint8)


def _differ(a, b) -> float | None:
    """None when the tensors in `a` and `b` have the same bytes, else the largest absolute difference."""
    worst, same = 0.0, True
    for x, y in zip(tree_flatten(a)[0], tree_flatten(b)[0]):
        rx, ry = _raw(x), _raw(y)
        if rx is None or ry is None or (rx.shape == ry.shape and torch.equal(rx, ry)):
            continue
        same = False
        if x.shape == y.shape and x.is_floating_point():
            worst = max(worst, float((x.to_dense().double() - y.to_dense().double()).abs().max()))
    return None if same else worst


class ThreadAudit(TorchDispatchMode):
    """Runs every aten operation once more on copies of its inputs at 1 thread and `repeats` times at each
    count of `threads`, and records the operations whose outputs (or written inputs) differ in any byte:
    `calls` counts operations by name, `mismatches` maps a thread-dependent one to what was seen. Random
    draws (seeded by a generator) run once, unchecked."""

    def __init__(self, threads=(2,), repeats: int = 1):
        super().__init__()
        self.threads, self.repeats = tuple(threads), repeats
        self.calls: dict[str, int] = defaultdict(int)
        self.mismatches: dict[str, dict] = {}

    def _rerun(self, func, args, kwargs, n: int):
        torch.set_num_threads(n)
        a, k = tree_map(_clone, (args, kwargs))
        return func(*a, **k), (a, k)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func.overloadpacket.__name__}.{func._overloadname}"
        self.calls[name] += 1
        if torch.Tag.nondeterministic_seeded in func.tags:     # random draws: a rerun would move the generator
            return func(*args, **kwargs)
        before = torch.get_num_threads()
        try:
            ref = self._rerun(func, args, kwargs, 1)
            for n in self.threads:
                for _ in range(self.repeats):
                    diff = _differ(ref, self._rerun(func, args, kwargs, n))
                    if diff is not None:
                        shapes = [tuple(t.shape) for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
                        row = self.mismatches.setdefault(name, dict(op=name, reruns=0, max_abs_diff=0.0,
                                                                    shapes=shapes, threads=set()))
                        row["reruns"] += 1
                        row["threads"].add(n)
                        row["max_abs_diff"] = max(row["max_abs_diff"], diff)
        finally:
            torch.set_num_threads(before)
        return func(*args, **kwargs)
