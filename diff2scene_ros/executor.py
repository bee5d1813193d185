"""A multi-threaded executor that waits for its thread pool instead of spinning.

Why the node does not use rclpy's ``MultiThreadedExecutor`` as it is: that executor hands
each ready callback to a thread pool as a task, and every time it looks for work it first
offers again every task that has not *started* yet. While the pool is busy (or its threads
wait for the interpreter lock, as on a 2-core robot computer fusing a camera stream) a task
sits in the pool's queue, so the executor offers it again at once and hands it to the pool a
second time, again and again: a loop that holds the interpreter lock exactly when the node
has the least of it. Measured in the node with a bag streaming in and queries back to back:
the executor's thread held the interpreter lock a quarter of the time, 2,500 copies of pending
tasks piled up, and queries that needed 20 ms of CPU took up to 1.2 s.

:class:`PoolExecutor` remembers the tasks it handed over whose run has not returned. When
rclpy offers one of them again it is not handed over a second time; the executor waits until
a pool thread finishes a task (at most :data:`HANDOVER_WAIT_S`) and then looks for work again.
Skipping alone is not enough: each finished task wakes the executor, every wake offers all
queued tasks again, and under load that was still ~13,000 turns a second (43 % of a core in
the executor's thread); waiting for the pool brought it to ~180. Everything else (callback
groups, futures, shutdown) is rclpy's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)

#: Longest wait for a pool thread to finish something when rclpy offers again a task that is
#: still queued; past it the executor looks for work again.
HANDOVER_WAIT_S = 0.05


class PoolExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that hands each task to its pool once and waits for the pool."""

    def __init__(self, num_threads: int | None = None, *, context: Any = None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        #: Tasks handed to the pool whose run has not returned yet.
        self._handed_over: set[Any] = set()
        self._handed_over_lock = threading.Lock()
        #: Notified whenever a pool thread finishes a task.
        self._finished = threading.Condition(self._handed_over_lock)
        #: Tasks handed to the pool.
        self.handovers = 0
        #: Times rclpy offered again a task that was still waiting for a pool thread.
        self.reoffers_skipped = 0

    def _run(self, task: Any) -> None:
        try:
            task()
        finally:
            with self._finished:
                self._handed_over.discard(task)
                self._finished.notify_all()

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        """Stop, after the tasks already handed to the pool have run (``timeout_sec``: at most
        that long; None or negative: as long as they take).

        rclpy 7.1's own shutdown waits for no task (its wait is skipped once the shutdown flag
        is set) and destroys the guard condition each queued task triggers as it starts: such
        a task then fails with ``InvalidHandle`` into a future nobody reads, printed as "an
        exception was never retrieved" when it is collected (5 of 5 shutdowns under load).
        """
        with self._shutdown_lock:
            if not self._is_shutdown:
                self._is_shutdown = True
                self._guard.trigger()
        deadline = None if timeout_sec is None or timeout_sec < 0 else (
            time.monotonic() + timeout_sec)
        with self._finished:
            while self._handed_over:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._finished.wait(left)
        return bool(super().shutdown(timeout_sec=0))

    def _spin_once_impl(self, timeout_sec: Any = None, wait_condition: Any = lambda: False) -> None:
        if self._is_shutdown:  # hand nothing over once shutdown began
            return
        try:
            task: Any = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)[0]
        except (
            ExternalShutdownException,
            ShutdownException,
            TimeoutException,
            ConditionReachedException,
        ):
            return
        with self._finished:
            if task in self._handed_over:  # still queued in the pool (or just starting)
                self.reoffers_skipped += 1
                self._finished.wait(HANDOVER_WAIT_S)
                return
            self._handed_over.add(task)
            self.handovers += 1
        self._executor.submit(self._run, task)
        self._futures.append(task)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions
