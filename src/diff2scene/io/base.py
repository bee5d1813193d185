"""The frame-source interface and its skip bookkeeping.

A source never raises for one bad message: it skips it, counts the reason and logs the first
occurrences, so a long replay or a live robot keeps its map when a sensor misbehaves.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator

from diff2scene.types import Frame

_LOG = logging.getLogger(__name__)

#: Told of each count as it is made: the counter (a diagnostics key such as
#: ``skipped_stale_stamp``) and the stamp of the image or message counted, in nanoseconds (None
#: when it has none). Counters say how many; this says which, so that a test or a fault injector
#: can tell the inputs it sent apart from everything else that went to the same counter.
CountListener = Callable[[str, "int | None"], None]


class SkipStats:
    """Counts of skipped inputs by reason, plus the frames delivered.

    Only the first ``log_first`` skips of each reason are logged, so a broken stream cannot
    flood the log while the totals still say exactly what happened. ``listener``, when set, is
    told of every skip with its reason (not yet prefixed) and the skipped input's stamp.
    """

    def __init__(self, *, log_first: int = 3) -> None:
        self.skipped: Counter[str] = Counter()
        self.delivered = 0
        self._log_first = log_first
        self.listener: CountListener | None = None

    def skip(self, reason: str, detail: str = "", *, stamp_ns: int | None = None) -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] <= self._log_first:
            _LOG.warning("skipped input (%s)%s", reason, f": {detail}" if detail else "")
        if self.listener is not None:
            self.listener(reason, stamp_ns)

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
