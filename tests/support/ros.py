"""What the tests and benchmarks that run the node, a player or a client as separate processes
share: where the repository is, the environment of a child process, polling with a deadline,
stopping a child, and this process's view of the node's ``/diagnostics``.

rclpy is imported only where a ROS entity is made, so a module that needs no more than
:data:`REPO` or :func:`child_env` imports this one without the ROS 2 wheels.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

#: The repository root: the working directory of child processes, and what puts ``tests`` and
#: ``bench`` on their import path.
REPO = Path(__file__).resolve().parents[2]
#: Default deadline of :func:`wait_for`: a node process imports torch and builds its 2D model
#: before it answers anything, which takes minutes on a loaded 2-core machine.
WAIT_S = 180.0
#: ``/diagnostics`` status of a diff2scene node carries this hardware id.
HARDWARE_ID = "diff2scene"


def child_env(domain_id: int | None = None) -> dict[str, str]:
    """This process's environment for a child: on ``domain_id`` (None: a random domain in
    1-100, so runs side by side do not hear each other), with the repository and its ``src``
    first on ``PYTHONPATH`` so ``python -m tests.…`` and ``python -m bench.…`` import in the
    child, from any working directory, and find this checkout's packages."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(random.randint(1, 100) if domain_id is None else domain_id)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S, *, period_s: float = 0.1
) -> None:
    """Poll ``condition`` every ``period_s`` until it holds; an AssertionError naming ``what``
    once ``timeout_s`` has passed (a test reports it as a failure, a benchmark stops)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(period_s)


def stop_child(proc: subprocess.Popen[Any], *, timeout_s: float, terminate: bool = True) -> None:
    """End a child process: SIGTERM (unless it was asked to stop another way), wait, kill
    only if it does not end in time; close its output pipes."""
    if terminate and proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def call_service(client: Any, request: Any, timeout_s: float) -> Any:
    """The response of an rclpy service ``client`` (whose node some executor spins in another
    thread) to ``request``; TimeoutError when the service does not appear, or does not answer,
    within ``timeout_s`` each. A request that timed out is withdrawn, so a late response is
    dropped instead of completing a future nobody reads."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise TimeoutError(f"no {client.srv_name} after {timeout_s} s")
    future = client.call_async(request)
    done = threading.Event()
    future.add_done_callback(lambda _future: done.set())
    if not done.wait(timeout_s):
        client.remove_pending_request(future)
        raise TimeoutError(f"{client.srv_name} did not answer in {timeout_s} s")
    return future.result()


class DiagnosticsObserver:
    """The latest diff2scene status on ``/diagnostics``, heard by a node of this process in an
    rclpy context of its own (on ``domain_id``; None: ``ROS_DOMAIN_ID``) that a background
    thread spins.

    ``node_name`` (``/ns/name``) keeps only that node's status — where other runs on the
    machine may share the domain; None keeps any diff2scene node's. Values stay the strings
    the node published. Service clients and subscriptions may be added to :attr:`node` at any
    time (rclpy wakes the spinning executor). Close it (or use it as a context manager) to stop
    the thread and the context.
    """

    def __init__(
        self,
        domain_id: int | None = None,
        *,
        name: str = "diagnostics_observer",
        node_name: str | None = None,
    ) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self._prefix = None if node_name is None else f"{node_name}:"
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._received = 0
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with suppress(ExternalShutdownException):
            self.executor.spin()

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id != HARDWARE_ID:
                continue
            if self._prefix is not None and not status.name.startswith(self._prefix):
                continue
            with self._lock:
                self._values = {kv.key: kv.value for kv in status.values}
                self._received += 1

    @property
    def received(self) -> int:
        """diff2scene status messages heard so far."""
        with self._lock:
            return self._received

    def values(self) -> dict[str, str]:
        """A copy of the latest status's values ({} before the first)."""
        with self._lock:
            return dict(self._values)

    def number(self, key: str, default: float = -1.0) -> float:
        """The latest value of ``key`` as a number; ``default`` while it has none."""
        with self._lock:
            return float(self._values.get(key, default))

    def count(self, key: str, default: int = -1) -> int:
        """The latest value of the counter ``key``; ``default`` while it has none."""
        return int(self.number(key, default))

    def wait_until(
        self, condition: Callable[[dict[str, str]], bool], timeout_s: float,
        *, period_s: float = 0.2,
    ) -> bool:
        """Whether ``condition`` of the latest values held within ``timeout_s`` (polled)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.values()):
                return True
            time.sleep(period_s)
        return False

    def fresh(self, timeout_s: float = 10.0) -> dict[str, str]:
        """The values of a status published after this call (waits for it)."""
        seen = self.received
        wait_for(lambda: self.received > seen, "a diagnostics message", timeout_s,
                 period_s=0.05)
        return self.values()

    def close(self) -> None:
        """Stop spinning, then destroy the node and the context (once the thread is out of
        every callback, so none runs on a destroyed entity)."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self) -> DiagnosticsObserver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
