"""sparseformer: train weight-sparse GPT-2-style transformers and read their circuits."""

from .errors import CheckpointError, ConfigError, DataError, SparseformerError, TaskError

__all__ = ["CheckpointError", "ConfigError", "DataError", "SparseformerError", "TaskError", "load_official",
           "import_official", "export_official", "SparseLinear", "SparseEmbedding", "sparsify", "densify",
           "param_groups", "SparseAdamW"]

_LAZY = {"load_official": "official", "import_official": "official", "export_official": "official",
         "SparseLinear": "layers", "SparseEmbedding": "layers", "sparsify": "layers", "densify": "layers",
         "param_groups": "sparsity.params",
         "SparseAdamW": "sparsity.optimizer"}


def __getattr__(name):
    # heavy submodules load on first use, so `import sparseformer` stays cheap
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sparseformer' has no attribute {name!r}")
__version__ = "0.1.0"
