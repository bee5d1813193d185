"""A multi-threaded executor that does not spin while its thread pool is busy.

Why the node does not use rclpy's ``MultiThreadedExecutor`` as it is: that executor hands
each ready callback to a thread pool and goes back to waiting, and every time it waits it
first offers again every task that has not *started* yet. While all pool threads are busy (a
query, the frame callbacks of a camera burst, on a 2-core robot computer) a handed-over task
sits in the pool's queue, so the executor offers it again at once, hands it to the pool a
second time, offers it again... — a loop that holds the interpreter lock and a core exactly
when the node has the least of either. Measured in the node under a streamed bag with
queries back to back: the spinning thread held the interpreter lock a quarter of the time,
2,500 copies of pending tasks piled up in the executor, and queries that needed 20 ms of CPU
took up to 1.2 s.

:class:`PoolExecutor` remembers the tasks it handed over whose run has not returned; when
rclpy offers one of them again it is not handed over a second time, and the executor goes on
to wait for new work (rclpy leaves entities whose task is pending out of what it waits on, so
that wait blocks). Everything else (callback groups, futures, shutdown) is rclpy's.
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)


class PoolExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that hands each task to its thread pool once."""

    def __init__(self, num_threads: int | None = None, *, context: Any = None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        #: Tasks handed to the pool whose run has not returned yet.
        self._handed_over: set[Any] = set()
        self._handed_over_lock = threading.Lock()
        #: Tasks handed to the pool.
        self.handovers = 0
        #: Times rclpy offered again a task that was still waiting for a pool thread.
        self.reoffers_skipped = 0

    def _run(self, task: Any) -> None:
        try:
            task()
        finally:
            with self._handed_over_lock:
                self._handed_over.discard(task)

    def _spin_once_impl(self, timeout_sec: Any = None, wait_condition: Any = lambda: False) -> None:
        try:
            task: Any = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)[0]
        except (
            ExternalShutdownException,
            ShutdownException,
            TimeoutException,
            ConditionReachedException,
        ):
            return
        with self._handed_over_lock:
            if task in self._handed_over:  # still queued in the pool (or just starting)
                self.reoffers_skipped += 1
                return
            self._handed_over.add(task)
            self.handovers += 1
        self._executor.submit(self._run, task)
        self._futures.append(task)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions
