"""One small hierarchy of errors; the CLI maps every ``EdgekdError`` to one line and exit code 2."""


class EdgekdError(Exception):
    """Base class of every error that is the user's to fix (bad input, missing file, ...)."""


class ConfigError(EdgekdError, ValueError):
    """A parameter or option has an invalid value."""


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


class EdgekdWarning(UserWarning):
    """Something the user should know that does not stop the run (a cache entry discarded, ...)."""
