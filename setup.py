"""Build script: pure Python by default, plus the optional CUDA extension sparseformer.kernels._C.

The extension is built only when torch is importable in the build environment, torch is a CUDA build,
a CUDA toolkit is found and SPARSEFORMER_SKIP_CUDA_BUILD is unset. It never fails for lack of CUDA unless
SPARSEFORMER_FORCE_CUDA_BUILD=1. Build it with `pip install --no-build-isolation -e .` so that setup.py
sees the torch that is already installed.

Toggles (environment):
  SPARSEFORMER_SKIP_CUDA_BUILD=1   never build the extension
  SPARSEFORMER_FORCE_CUDA_BUILD=1  fail instead of skipping when the extension cannot be built
  CUDA_HOME                        toolkit root (a wrapper nvcc in /usr/local/bin makes torch guess wrong)
  TORCH_CUDA_ARCH_LIST             default "9.0" (H100/H200)
  MAX_JOBS, NVCC_THREADS           build parallelism
"""

import glob
import os
import sys

from setuptools import setup

SKIP = os.environ.get("SPARSEFORMER_SKIP_CUDA_BUILD", "0") == "1"
FORCE = os.environ.get("SPARSEFORMER_FORCE_CUDA_BUILD", "0") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg: str) -> None:
    print(f"sparseformer setup: {msg}", file=sys.stderr)


def _cuda_extension():
    """Return ([ext], cmdclass) when the CUDA extension can be built, else ([], {}) with a reason printed."""
    if SKIP:
        return [], {}, "SPARSEFORMER_SKIP_CUDA_BUILD=1"
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}, "no sources in csrc/"
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # build isolation hides the installed torch
        return [], {}, f"torch not importable in the build environment ({type(e).__name__})"
    if torch.version.cuda is None:
        return [], {}, f"torch {torch.__version__} is not a CUDA build"
    if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        cpp_extension.CUDA_HOME = "/usr/local/cuda"
    if cpp_extension.CUDA_HOME is None:
        return [], {}, "no CUDA toolkit found (set CUDA_HOME)"
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    os.environ.setdefault("MAX_JOBS", str(max(1, min(8, os.cpu_count() or 1))))
    nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo", f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
    ext = cpp_extension.CUDAExtension(
        name="sparseformer.kernels._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}, None


ext_modules, cmdclass, reason = _cuda_extension()
if reason is not None:
    if FORCE:
        raise RuntimeError(f"SPARSEFORMER_FORCE_CUDA_BUILD=1 but the CUDA extension cannot be built: {reason}")
    _say(f"skipping the CUDA extension: {reason}; installing pure Python")

setup(ext_modules=ext_modules, cmdclass=cmdclass)
