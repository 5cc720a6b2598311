"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class NextokenError(Exception):
    """Bad input from the user; the message says what is wrong and what to do."""

    exit_code = 1
    every_rank = False  # raised alike by every process of a torchrun job: only rank 0 need say it


class ConfigError(NextokenError):
    """An unknown or ill-typed config field, or an invalid value."""

    exit_code = 2
    every_rank = True  # every rank parses the same command line


class DataError(NextokenError):
    """A corpus or prepared-data problem."""


class CheckpointError(NextokenError):
    """A missing, corrupt or mismatched checkpoint."""
