"""One progress-callback protocol for every long step (forward passes, builds, training, validation).

A long-running function takes ``progress: ProgressFn | None`` and calls it with a
:class:`ProgressEvent`. The event says how far the whole step is (``fraction`` in [0, 1], or ``None``
when unknown), what is happening in words (``message``), which phase it is in (``phase``, e.g.
``"forward"``, ``"epoch"``, ``"done"``) and any figures that belong to it (``data``: an epoch's
``train_loss`` and ``val_acc``, a teacher's name, ...). Job runners store events as they are; the UI
draws a bar from ``fraction`` and curves from ``data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ProgressEvent", "ProgressFn", "emit", "scaled"]


@dataclass(frozen=True)
class ProgressEvent:
    """One report of progress: ``fraction`` of the step done, a message, a phase and its figures."""

    message: str = ""
    fraction: float | None = None
    phase: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "fraction": self.fraction, "phase": self.phase, **dict(self.data)}


class ProgressFn(Protocol):
    def __call__(self, event: ProgressEvent, /) -> None: ...


def emit(progress: ProgressFn | None, message: str = "", fraction: float | None = None, phase: str = "",
         **data: Any) -> None:
    """Call ``progress`` (when given) with an event built from the arguments."""
    if progress is not None:
        progress(ProgressEvent(message=message, fraction=fraction, phase=phase, data=data))


def scaled(progress: ProgressFn | None, start: float, stop: float) -> ProgressFn | None:
    """A callback that maps a sub-step's fraction in [0, 1] onto [start, stop] of the parent's."""
    if progress is None:
        return None

    def inner(event: ProgressEvent) -> None:
        fraction = None if event.fraction is None else start + (stop - start) * event.fraction
        progress(ProgressEvent(event.message, fraction, event.phase, event.data))

    return inner
