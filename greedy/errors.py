"""Exceptions raised for bad user input.

Every error a user can cause (bad option, missing or corrupt file) is a
``GreedyError``; the CLI prints its message on one line and exits with code 2.
"""


class GreedyError(Exception):
    """Base class for errors caused by user input (files, options, data)."""


class DatasetError(GreedyError, ValueError):
    """A dataset file is missing, truncated, corrupt or inconsistent."""


class ConfigError(GreedyError, ValueError):
    """An option, architecture spec or argument is invalid."""


class CheckpointError(GreedyError, ValueError):
    """A model file is missing, corrupt or does not match its architecture."""
