"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with `exit_code`."""


class PixlabError(Exception):
    """Bad input from the user: a config, a data file, a checkpoint. Nothing was written for it."""

    exit_code = 2


class ConfigError(PixlabError):
    """A config key, type or value that is not valid."""


class DataError(PixlabError):
    """A dataset file that is missing, corrupt or not what its checksum says."""


class CheckpointError(PixlabError):
    """A checkpoint that is missing or that we refuse to load."""


class NonFiniteLossError(PixlabError):
    """Training diverged. The run folder and its last good checkpoint are kept."""

    exit_code = 1
