"""The optional CUDA extension sparseformer.kernels._C: the prebuilt module, or a just-in-time build.

Nothing else imports `_C`. `load()` returns (module, None) or (None, reason) and never raises.
`build_jit()` compiles csrc/ with torch.utils.cpp_extension.load (needs nvcc, a CUDA build of torch and
the csrc/ folder of a source checkout); set SPARSEFORMER_JIT=1 to let `load()` try it when the prebuilt
module is missing.
"""

from __future__ import annotations

import glob
import importlib
import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def sources() -> list[str]:
    """The extension's source files (csrc/*.cu and *.cpp of this checkout)."""
    return sorted(glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(CSRC, "*.cpp")))


def build_jit(verbose: bool = False):
    """Compile and import the extension now; raises RuntimeError with the reason when it cannot."""
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is not a CUDA build")
    srcs = sources()
    if not srcs:
        raise RuntimeError(f"no CUDA sources under {CSRC} (JIT needs a source checkout)")
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    return cpp_extension.load(name="sparseformer_C_jit", sources=srcs, verbose=verbose,
                              extra_cuda_cflags=["-O3", "--use_fast_math"], extra_cflags=["-O3"])


@lru_cache(maxsize=None)
def load():
    """(module, None) when the extension is importable (prebuilt, or JIT when SPARSEFORMER_JIT=1)."""
    try:                    # by name: a compiled module that may be absent (and has no Python imports)
        return importlib.import_module(f"{__package__}._C"), None
    except Exception as e:
        reason = f"the CUDA extension is not built ({type(e).__name__}: {e})"
    if os.environ.get("SPARSEFORMER_JIT") == "1":
        try:
            return build_jit(), None
        except Exception as e:
            reason += f"; JIT build failed ({type(e).__name__}: {e})"
    return None, reason


def require():
    """The extension module; raises RuntimeError with the reason when it is not available."""
    ext, reason = load()
    if ext is None:
        raise RuntimeError(f"the CUDA extension sparseformer.kernels._C is not available: {reason}")
    return ext
