"""Exceptions raised for bad user input.

Every error a user can cause derives from :class:`ScdError` (a ``ValueError``) so that the CLI and
the app can show a one-line message instead of a traceback.
"""

from __future__ import annotations


class ScdError(ValueError):
    """Base class of every error caused by user input (bad files, names, options)."""


class TargetSetError(ScdError):
    """A target set (folder, zip, CSV or demo name) cannot be used; the message names file and problem."""


class TeacherError(ScdError):
    """A teacher (folder, config, weights or hub name) cannot be loaded or used."""
