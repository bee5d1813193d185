"""Approximate time synchronisation of two image streams (colour and depth).

Like ``message_filters.ApproximateTimeSynchronizer`` restricted to two topics: a colour image is
paired with the depth image nearest in time once no nearer one can still arrive, and only if
they are within ``slop_ns``. Queues are bounded; what falls out is counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from diff2scene.io.base import SkipStats

A = TypeVar("A")
B = TypeVar("B")


@dataclass
class _Stamped(Generic[A]):
    stamp_ns: int
    item: A


class ApproximateSync(Generic[A, B]):
    """Pairs items of stream A (colour) with the nearest item of stream B (depth)."""

    def __init__(
        self, *, slop_ns: int, max_queue: int = 30, stats: SkipStats | None = None
    ) -> None:
        if slop_ns < 0:
            raise ValueError("slop_ns must be >= 0")
        self.slop_ns = slop_ns
        self._a: deque[_Stamped[A]] = deque()
        self._b: deque[_Stamped[B]] = deque()
        self._max_queue = max_queue
        #: Skips of stream-A items (each A item is one camera frame, so these are frame losses).
        self.stats = stats if stats is not None else SkipStats()
        #: Stream-B items pushed out of a full queue (unused, but no frame is lost by it).
        self.b_overflow = 0

    def add_a(self, stamp_ns: int, item: A) -> list[tuple[int, A, B]]:
        self._a.append(_Stamped(stamp_ns, item))
        if len(self._a) > self._max_queue:
            dropped = self._a.popleft()
            self.stats.skip("sync_queue_overflow", "colour queue full", stamp_ns=dropped.stamp_ns)
        return self._match(final=False)

    def add_b(self, stamp_ns: int, item: B) -> list[tuple[int, A, B]]:
        self._b.append(_Stamped(stamp_ns, item))
        if len(self._b) > self._max_queue:
            self._b.popleft()
            self.b_overflow += 1
        return self._match(final=False)

    @property
    def waiting(self) -> int:
        """Stream-A items still waiting for a partner."""
        return len(self._a)

    def clear(self) -> None:
        """Drop everything queued, counting the A items as frame losses."""
        for a in self._a:
            self.stats.skip("no_depth_match", "queue cleared", stamp_ns=a.stamp_ns)
        self._a.clear()
        self._b.clear()

    def flush(self) -> list[tuple[int, A, B]]:
        """Match what can still be matched at the end of a stream; count the rest."""
        out = self._match(final=True)
        for a in self._a:
            self.stats.skip("no_depth_match", "stream ended", stamp_ns=a.stamp_ns)
        self._a.clear()
        self._b.clear()
        return out

    def _match(self, *, final: bool) -> list[tuple[int, A, B]]:
        out: list[tuple[int, A, B]] = []
        while self._a:
            a = self._a[0]
            # Depths older than any colour we could still pair them with are useless.
            while self._b and self._b[0].stamp_ns < a.stamp_ns - self.slop_ns:
                self._b.popleft()
            later_b_seen = bool(self._b) and self._b[-1].stamp_ns >= a.stamp_ns
            if not final and not later_b_seen:
                break  # a nearer depth may still arrive
            best = min(self._b, key=lambda b: abs(b.stamp_ns - a.stamp_ns), default=None)
            self._a.popleft()
            if best is None or abs(best.stamp_ns - a.stamp_ns) > self.slop_ns:
                self.stats.skip("no_depth_match", f"colour t={a.stamp_ns} has no depth within slop",
                                stamp_ns=a.stamp_ns)
                continue
            # Each depth serves one colour image, and older depths can serve no later one.
            while self._b and self._b[0] is not best:
                self._b.popleft()
            self._b.popleft()
            out.append((a.stamp_ns, a.item, best.item))
        return out
