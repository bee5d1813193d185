"""Give short latency-critical calls (queries) the interpreter before long background calls.

Open3D's TSDF integration holds the GIL for the whole call (20-200 ms per frame, by image
size; measured: a Python thread that wakes every millisecond saw gaps that long during every
``integrate``). A node fusing frames back to back therefore runs a query's Python steps only in
the gaps between integrations. Threads have no priorities in Python, so background work that
holds the GIL can ask a :class:`PriorityGate` for its turn before each such call: it waits while
priority work runs, never longer than ``max_wait_s`` per call (a stream of queries cannot stop
mapping; it only slows it down). The waits are counted.

The pipeline's gate is off by default (``PipelineConfig.yield_to_queries_max_s`` = 0): once
queries took ~10 ms of CPU, the live benchmark (320 x 240 stream, back-to-back queries) gave
the same latency with and without it (p95 56 vs 49 ms) while the gate cost a tenth of the
frames (285 vs 325 of 400 fused). It is worth turning on where single queries are slow (a
cold text forward of a large CLIP tower) and frames are large.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class GateStats:
    """What background work gave up to priority work."""

    #: Calls of :meth:`PriorityGate.wait_turn` that found priority work running.
    waits: int = 0
    #: Of those, the ones that stopped waiting after ``max_wait_s`` with priority work left.
    waits_timed_out: int = 0
    #: Seconds spent waiting, in total.
    waited_s_total: float = 0.0


class PriorityGate:
    """Priority work holds the gate open (:meth:`priority`); background work waits its turn.

    ``max_wait_s`` bounds each wait of :meth:`wait_turn`; 0 turns the gate off (background
    work never waits). Thread-safe; priority sections may overlap and nest.
    """

    def __init__(self, max_wait_s: float) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_wait_s = float(max_wait_s)
        self._active = 0
        self._cond = threading.Condition()
        self._stats = GateStats()

    @contextmanager
    def priority(self) -> Iterator[None]:
        """Run the body as priority work: background calls wait until it ends."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    def wait_turn(self) -> float:
        """Wait while priority work runs (at most ``max_wait_s``); returns the seconds waited."""
        if self.max_wait_s <= 0.0:
            return 0.0
        with self._cond:
            if self._active == 0:
                return 0.0
            t0 = time.monotonic()
            done = self._cond.wait_for(lambda: self._active == 0, timeout=self.max_wait_s)
            waited = time.monotonic() - t0
            self._stats.waits += 1
            self._stats.waits_timed_out += int(not done)
            self._stats.waited_s_total += waited
            return waited

    def stats(self) -> GateStats:
        """A copy of the counters."""
        with self._cond:
            return GateStats(**vars(self._stats))
