"""The frame-source interface and its skip bookkeeping.

A source never raises for one bad message: it skips it, counts the reason and logs the first
occurrences, so a long replay or a live robot keeps its map when a sensor misbehaves.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator

from diff2scene.types import Frame

_LOG = logging.getLogger(__name__)


class SkipStats:
    """Counts of skipped inputs by reason, plus the frames delivered.

    Only the first ``log_first`` skips of each reason are logged, so a broken stream cannot
    flood the log while the totals still say exactly what happened.
    """

    def __init__(self, *, log_first: int = 3) -> None:
        self.skipped: Counter[str] = Counter()
        self.delivered = 0
        self._log_first = log_first

    def skip(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] <= self._log_first:
            _LOG.warning("skipped input (%s)%s", reason, f": {detail}" if detail else "")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, int]:
        out = {"delivered": self.delivered, "skipped_total": self.total_skipped}
        out.update({f"skipped_{k}": v for k, v in sorted(self.skipped.items())})
        return out


class FrameSource(ABC):
    """An iterable of time-synchronised :class:`~diff2scene.types.Frame` objects."""

    def __init__(self) -> None:
        self.stats = SkipStats()

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]:
        """Frames in time order; bad input is skipped and counted in :attr:`stats`."""
