"""sparseformer: train weight-sparse GPT-2-style transformers and read their circuits."""

from .errors import CheckpointError, ConfigError, DataError, SparseformerError, TaskError

__all__ = ["CheckpointError", "ConfigError", "DataError", "SparseformerError", "TaskError"]
__version__ = "0.1.0"
