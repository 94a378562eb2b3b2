"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with `exit_code`."""

from __future__ import annotations

from typing import Optional


class PixlabError(Exception):
    """Bad input from the user: a config, a data file, a checkpoint. Nothing was written for it."""

    exit_code = 2


class ConfigError(PixlabError):
    """A config key, type or value that is not valid. `key` (dotted) lets the loader blame the override
    or the file that set it."""

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


class DataError(PixlabError):
    """A dataset file that is missing, unreadable, corrupt or not what its checksum says."""


class CheckpointError(PixlabError):
    """A checkpoint that is missing or that we refuse to load."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that is torn or truncated (not one that holds something we refuse to run)."""


class RunFolderError(PixlabError):
    """A run folder that cannot be made, read or locked: its path and what is wrong are in the message."""


class NonFiniteLossError(PixlabError):
    """Training diverged. The run folder and its last checkpoint with finite weights are kept."""

    exit_code = 1
