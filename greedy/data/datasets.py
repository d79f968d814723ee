"""Alias of :mod:`greedy.data` for importers not yet moved to it (greedy/cli.py)."""

from greedy.data import *  # noqa: F401,F403
from greedy.data import load_dataset  # noqa: F401
