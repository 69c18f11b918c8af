"""Process-wide facts the kernels read once: whether Triton runs in its CPU interpreter."""

import os

# Triton reads TRITON_INTERPRET when @triton.jit runs (at import of a kernel module), so this must be set
# before sparseformer.kernels is imported; tests/conftest.py does that on machines without a GPU.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
