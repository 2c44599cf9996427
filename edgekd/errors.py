"""One small hierarchy of errors; the CLI maps every ``EdgekdError`` to one line and exit code 2."""


class EdgekdError(Exception):
    """Base class of every error that is the user's to fix (bad input, missing file, ...)."""


class ConfigError(EdgekdError, ValueError):
    """A parameter or option has an invalid value."""


class ModelTooLargeError(ConfigError):
    """An architecture that would not fit in this machine's memory (``edgekd.models``): the machine's to change, or
    the options, not the artifact that names it."""


class ResumeMismatch(EdgekdError):
    """``--resume`` of an interrupted run that was started with other settings (or another teacher)."""


class TeacherChanged(ResumeMismatch):
    """``--resume`` of an interrupted run started from another teacher, all else the same."""


class SettingsChanged(ResumeMismatch):
    """``--resume`` of an interrupted run started with other settings or data (not other software); ``changes``: one
    phrase per setting."""

    def __init__(self, message: str, changes=()):
        super().__init__(message)
        self.changes = tuple(changes)


class DataError(EdgekdError):
    """A dataset is missing, malformed or does not fit the model."""


class ArtifactError(EdgekdError):
    """An artifact folder is missing, corrupt or of the wrong kind."""


class TeacherError(EdgekdError):
    """A teacher cannot be loaded or does not fit the data."""


class TrainingError(EdgekdError):
    """Training cannot go on (a non-finite loss, an empty transfer set, ...)."""


class ExportError(EdgekdError):
    """An export failed or did not pass its verification gate."""


class AccuracyGateError(ExportError):
    """A quantized model lost more test accuracy than allowed: a measured outcome, not a fault of the tool
    (the pipeline reports it and goes on; ``edgekd export`` exits 2, as for any refused export)."""


class StagesFailed(EdgekdError):
    """A run finished its other stages but one or more failed; they are in its summary (exit code 1, not 2:
    the input may be fine, and what was made is kept)."""

    exit_code = 1


class EdgekdWarning(UserWarning):
    """Something the user should know that does not stop the run (a cache entry discarded, ...)."""
