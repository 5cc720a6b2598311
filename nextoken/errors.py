"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class NextokenError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""

    exit_code = 1


class ConfigError(NextokenError):
    """An unknown or ill-typed config field, or an invalid value."""

    exit_code = 2


class DataError(NextokenError):
    """A corpus or prepared-data problem."""


class CheckpointError(NextokenError):
    """A missing, corrupt or mismatched checkpoint."""
