"""The errors that mean "bad input" or "nothing was written", importable from anywhere.

This module imports nothing from vlaforge, so the lowest layers (policies, envs' helpers, checkpoints) can
raise these and ``vlaforge.validate`` / the CLI can catch them without an import cycle. The CLI prints
``UsageError``, ``CheckpointError``, ``NonFiniteError`` (and ``envs.EnvError`` / ``envs.MissingExtra``) as one
line with exit status 2; every other exception keeps its traceback (a bug).

    python -c "from vlaforge.errors import UsageError; raise UsageError('--x must be > 0')"
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user (a flag, a file it names). The message names it and says what to do."""


class CheckpointError(ValueError):
    """A checkpoint is missing, partial or corrupt. The message says what to do."""


class NonFiniteError(RuntimeError):
    """A policy with a non-finite tensor was about to be written; nothing was written. The message names
    the last good checkpoint, if any."""
