"""Error types raised for bad user input.

Every error raised for something a user can fix derives from :class:`LatentDitError`; the CLI
prints its one-line message and exits with status 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations


class LatentDitError(Exception):
    """Base class of errors a user can act on; the message names the problem and the fix."""


class ConfigError(LatentDitError, ValueError):
    """An invalid, unknown or inconsistent configuration value."""


class DataError(LatentDitError, ValueError):
    """Unreadable, empty, ragged or non-finite input data."""


class CheckpointError(LatentDitError, ValueError):
    """A missing, corrupt or incompatible checkpoint, export or run directory."""


class DivergenceError(LatentDitError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class OutputError(LatentDitError, ValueError):
    """An output path (``--out``) that cannot be created or written: checked before the work starts."""
