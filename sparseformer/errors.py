"""Errors a user can cause. The CLI prints str(e) as one line; library code raises these."""


class SparseformerError(Exception):
    """Base class: a problem with the user's input, reported as one clear line."""


class ConfigError(SparseformerError, ValueError):
    """A bad configuration value or combination."""


class DataError(SparseformerError):
    """Missing, empty or unreadable corpus or task data."""


class CheckpointError(SparseformerError):
    """A missing, truncated, corrupt or mismatched run directory or checkpoint."""


class TaskError(SparseformerError):
    """An unknown task, malformed task file, or a task the tokenizer cannot express."""


class PruneError(SparseformerError):
    """A pruning request that cannot be met (e.g. a target loss the full model does not reach)."""


class TrainingDiverged(SparseformerError):
    """The loss became non-finite; the last good checkpoint is kept."""


class WriteError(SparseformerError, OSError):
    """A file could not be written (disk full, no permission); names the file. An OSError too, so handlers of
    failed writes keep working."""
