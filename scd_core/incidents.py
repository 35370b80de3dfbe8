"""What the user is told about an exception: input feedback for :class:`ScdError`, an id for a bug.

Only :class:`~scd_core.errors.ScdError` (and its subclasses) carries a message written for users. Any
other exception is a bug: :func:`record` writes its traceback, under a short random id, to
``<workspace>/logs/internal-errors.log`` and to the ``scd_core.incidents`` logger, and the user sees
:func:`note` ("internal error (id 1a2b3c4d) ..."), never the exception's text (which may hold server
paths or internals). The app and the CLI both go through :func:`user_message`.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import traceback
from dataclasses import dataclass
from pathlib import Path

from scd_core.errors import ScdError
from scd_core.runtime.workspace import subdir

LOGGER = logging.getLogger(__name__)
LOG_NAME = "internal-errors.log"
_LOG_ROTATE_BYTES = 4 << 20  # one previous log (.1) is kept; bugs are rare, a loop must not fill the disk


@dataclass(frozen=True)
class Incident:
    """A recorded bug: its id and the log file holding its traceback (None when the log is unwritable)."""

    id: str
    log_path: Path | None


def log_path() -> Path:
    """The log of internal errors, in the workspace (created on demand)."""
    return subdir("logs") / LOG_NAME


def _append(text: str) -> Path | None:
    try:
        path = log_path()
        if path.is_file() and path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(LOG_NAME + ".1"))
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
        return path
    except Exception:  # an unwritable log must not hide the error being reported
        return None


def record(exc: BaseException, *, echo: bool = True) -> Incident:
    """Log ``exc`` with its traceback under a new id; ``echo`` also sends it to the logger (server console)."""
    incident = secrets.token_hex(4)
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = _append(f"--- internal error {incident} at {stamp}\n{trace}\n")
    if echo or path is None:
        LOGGER.error("internal error %s\n%s", incident, trace.rstrip())
    return Incident(incident, path)


def note(incident: Incident, *, show_path: bool = False) -> str:
    """The short text a user sees for a bug; ``show_path`` names the log file (for the CLI on the server)."""
    where = (f"traceback in {incident.log_path}" if show_path and incident.log_path is not None
             else "the server log holds the details under this id")
    return f"internal error (id {incident.id}): this is a bug, not a problem with your input; {where}"


def user_message(exc: BaseException, *, echo: bool = True, show_path: bool = False) -> str:
    """The message of an ScdError; for anything else, the note of a newly recorded incident."""
    if isinstance(exc, ScdError):
        return str(exc)
    return note(record(exc, echo=echo), show_path=show_path)
