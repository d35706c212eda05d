"""The errors a user can fix, as one family.

Everything the command line reports as one line (``ssn: error: ...``, exit code 2) is a
:class:`UserError`: a bad data file, a bad setting, a missing run. Any other exception is a bug
in ``ssn`` (or in a backbone) and keeps its traceback (exit code 1).

``DataError`` and ``ConfigError`` are also ``ValueError``\\ s, so code written against earlier
versions that caught ``ValueError`` still catches them.
"""

from __future__ import annotations

__all__ = ["UserError", "DataError", "ConfigError", "RunError", "OutputError"]


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""


class DataError(UserError, ValueError):
    """A data file that cannot be used (missing, corrupt, wrong shapes or labels)."""


class ConfigError(UserError, ValueError):
    """A setting of the wrong type or out of range, or settings that contradict each other."""


class RunError(UserError):
    """A run directory that is missing, incomplete or does not match what was asked of it."""


class OutputError(RunError):
    """An output that cannot be written: a device or folder where a file should go, a full disk,
    no permission. (A :class:`RunError`, as unwritable outputs were before.)"""
