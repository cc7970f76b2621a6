"""DVError and its kinds: the one way a user's mistake surfaces in dv.

A DVError carries one actionable sentence. The CLI prints it as a single line
without a traceback and exits with code 2.
"""


class DVError(Exception):
    """A user-facing error: bad input, a missing file, a wrong setting."""

    exit_code = 2


class ConfigError(DVError):
    """A recipe or command-line value that cannot work."""


class DataError(DVError):
    """Input data (videos, manifests, shards) that cannot be used."""


class WeightsError(DVError):
    """A weights file that is missing, unreadable or does not match the model."""


class TrainingError(DVError):
    """A training run that cannot go on (for example a non-finite loss)."""
