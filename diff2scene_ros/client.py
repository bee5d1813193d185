"""Ask a running diff2scene node where something is: a typed client of ``~/text_query``.

A planner writes ``QueryClient().query("the mug on the table")`` and gets a
:class:`QueryAnswer` back: the matching instances (label, score, box) and the matching map points
as NumPy arrays, instead of a hand-written rclpy script around the raw service. The same client
backs ``diff2scene query``.

Threading model, because every rclpy call needs a spinning executor:

- ``QueryClient()`` without a ``node`` makes its own node in its own context (or in the given
  ``context``) and spins it in a background thread, so ``query()`` can simply block.
- ``QueryClient(node=my_node)`` adds the service client to the planner's node; the planner's
  executor must spin that node (a ``MultiThreadedExecutor``, or a thread of its own). A blocking
  :meth:`QueryClient.query` inside a callback of a single-threaded executor would wait for a
  response that executor can never deliver — use :meth:`QueryClient.query_async` there.

Three ways to call, one behaviour (same validation, timeout and errors):

- :meth:`QueryClient.query` blocks and returns the answer;
- :meth:`QueryClient.query_async` returns an ``rclpy.task.Future`` (what ``Client.call_async``
  returns), so ``answer = await client.query_async("mug")`` works inside an ``async def`` callback
  of an rclpy executor, and ``future.add_done_callback`` anywhere;
- :meth:`QueryClient.aquery` is a coroutine for asyncio code: ``await client.aquery("mug")``.

A node that is absent raises :class:`NodeUnavailableError` once the timeout has passed; a node
that does not answer in time raises :class:`QueryTimeoutError`. A node that answers "no"
(empty map, empty text) is not an exception: the answer has ``success = False`` and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from diff2scene_interfaces.srv import TextQuery
from numpy.typing import NDArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future

from diff2scene.errors import Diff2SceneError, InputError
from diff2scene_ros import conversions as cv

if TYPE_CHECKING:
    from rclpy.client import Client

#: Name of the node that ``ros2 launch diff2scene bringup.launch.py`` starts.
DEFAULT_NODE_NAME = "/diff2scene"
#: Seconds to wait for the service to appear and, separately, for its answer. A cold node
#: encodes the query text and clusters instances, which takes well under a second on a CPU;
#: discovery of a node started a moment ago can take a few seconds.
DEFAULT_TIMEOUT_S = 10.0
#: QoS of the ``~/text_query`` client: reliable, with a history deep enough that no answer is
#: pushed out of it. rmw_fastrtps hands every response of a service to every client of that
#: service (each client keeps the responses to its own requests and discards the rest), and a
#: reliable reader holds the samples that arrive after a lost datagram until the writer has
#: repaired the loss. With the default service QoS (10 deep), answers to other clients queued
#: behind a loss pushed a client's own answer out. Measured: the soak's storm (20 clients in
#: one process) lost 4 of 1000 queries, a shorter storm 3-9 of 8000, every one answered by the
#: node by its own counters; with a 4 KiB receive buffer in the client process
#: (``tests/diff2scene_ros/test_client_storm.py``) 10-30 of 930 per run. 1000 deep: none. The
#: node keeps 100 responses for repair (its service history), so no more than about 100 answers
#: can queue behind a loss that will still be repaired; 1000 is ten times that.
QUERY_CLIENT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE
)


class NodeUnavailableError(Diff2SceneError):
    """The node's ``~/text_query`` service did not appear within the timeout."""

    def __init__(self, service: str, timeout_s: float, domain_id: int) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.domain_id = domain_id
        super().__init__(
            f"no service {service} after {timeout_s:.1f} s: is the diff2scene node running, "
            f"under this name (pass the node name, e.g. /robot1/diff2scene, if it runs in a "
            f"namespace), and on this ROS_DOMAIN_ID ({domain_id})? `ros2 service list` on the "
            "node's machine shows what it offers."
        )


class QueryTimeoutError(Diff2SceneError):
    """The service exists but did not answer within the timeout."""

    def __init__(self, service: str, timeout_s: float) -> None:
        self.service = service
        self.timeout_s = timeout_s
        super().__init__(
            f"{service} did not answer within {timeout_s:.1f} s (the node may be busy or "
            "stuck; a longer timeout may help)"
        )


@dataclass(frozen=True)
class QueryInstance:
    """One object of an answer: a connected group of map voxels that match the query."""

    #: Class or query text the instance was matched to.
    label: str
    #: Mean match probability of its voxels, in [0, 1].
    score: float
    #: Centre of its axis-aligned box in the answer's frame, in metres.
    centroid_m: tuple[float, float, float]
    #: Extent of that box along x, y, z, in metres.
    box_size_m: tuple[float, float, float]
    #: Number of map points (voxels) in it.
    num_points: int


@dataclass(frozen=True, eq=False)
class QueryAnswer:
    """What the node answered to one query (arrays compare by identity, hence ``eq=False``)."""

    #: The query text as sent.
    query: str
    #: False when the node could not answer (empty map, empty text, no text encoder).
    success: bool
    #: The node's reason on failure, a short summary on success.
    message: str
    #: Matching objects, best first.
    instances: tuple[QueryInstance, ...]
    #: Matching points: ``points_m`` (N, 3) float32, ``rgb`` (N, 3) uint8 (the map's colour),
    #: ``labels`` (N,) uint32 (1-based rank of the instance the point belongs to, 0 = none),
    #: ``scores`` (N,) float32 (the point's match score). Empty when nothing matched.
    points: cv.Cloud
    #: Frame of the points and boxes (the node's ``world_frame``; "" when there are none).
    frame_id: str
    #: Stamp of the answer's cloud, in nanoseconds.
    stamp_ns: int
    #: Seconds from sending the request to having the response (as seen by this client).
    latency_s: float

    def instance_points_m(self, index: int) -> NDArray[np.float32]:
        """(K, 3) float32 points of ``instances[index]`` (0-based; the cloud labels are 1-based)."""
        if not 0 <= index < len(self.instances):
            raise IndexError(f"instance {index} of {len(self.instances)}")
        if self.points.labels is None:
            return np.zeros((0, 3), np.float32)
        mask = self.points.labels == index + 1
        return np.asarray(self.points.points_m[mask], dtype=np.float32)

    def to_dict(self, *, with_points: bool = False) -> dict[str, Any]:
        """JSON-serialisable form; points as ``[[x, y, z, label, score], ...]`` if asked."""
        out: dict[str, Any] = {
            "query": self.query,
            "success": self.success,
            "message": self.message,
            "frame_id": self.frame_id,
            "stamp_ns": self.stamp_ns,
            "latency_s": round(self.latency_s, 4),
            "num_matching_points": int(self.points.points_m.shape[0]),
            "instances": [
                {
                    "label": inst.label,
                    "score": round(inst.score, 4),
                    "centroid_m": [round(v, 4) for v in inst.centroid_m],
                    "box_size_m": [round(v, 4) for v in inst.box_size_m],
                    "num_points": inst.num_points,
                }
                for inst in self.instances
            ],
        }
        if with_points:
            n = self.points.points_m.shape[0]
            labels = self.points.labels if self.points.labels is not None else np.zeros(n)
            scores = self.points.scores if self.points.scores is not None else np.zeros(n)
            out["points"] = [
                [round(float(x), 4), round(float(y), 4), round(float(z), 4), int(lab),
                 round(float(s), 4)]
                for (x, y, z), lab, s in zip(self.points.points_m, labels, scores, strict=True)
            ]
        return out


def answer_from_response(
    query: str, response: TextQuery.Response, *, latency_s: float = 0.0
) -> QueryAnswer:
    """A :class:`QueryAnswer` of a raw ``TextQuery`` response; :class:`InputError` if its cloud
    is malformed."""
    instances = tuple(
        QueryInstance(
            label=str(inst.label),
            score=float(inst.score),
            centroid_m=(float(inst.centroid.x), float(inst.centroid.y), float(inst.centroid.z)),
            box_size_m=(float(inst.box_size.x), float(inst.box_size.y), float(inst.box_size.z)),
            num_points=int(inst.point_count),
        )
        for inst in response.instances
    )
    return QueryAnswer(
        query=query,
        success=bool(response.success),
        message=str(response.message),
        instances=instances,
        points=cv.cloud_to_arrays(response.points),
        frame_id=str(response.points.header.frame_id),
        stamp_ns=cv.stamp_to_ns(response.points.header.stamp),
        latency_s=latency_s,
    )


def text_query_service(node_name: str) -> str:
    """``~/text_query`` of a node: ``/ns/diff2scene`` → ``/ns/diff2scene/text_query``."""
    name = node_name.strip().rstrip("/")
    if not name or any(c.isspace() for c in name):
        raise InputError("bad_node_name", f"{node_name!r} is not a node name")
    return f"{name}/text_query"


class QueryClient:
    """Client of a diff2scene node's ``~/text_query`` service (see the module doc for threads).

    Use as a context manager, or call :meth:`close`, to stop the background executor it owns.
    """

    def __init__(
        self,
        node_name: str = DEFAULT_NODE_NAME,
        *,
        node: Node | None = None,
        context: Context | None = None,
        domain_id: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """``node_name``: the diff2scene node (absolute, or relative to the client node's
        namespace). ``node``: a node of the caller's, spun by the caller's executor; otherwise a
        node of our own is made in ``context`` (a new one, initialised here with ``domain_id``
        or ``ROS_DOMAIN_ID``, when None) and spun in a background thread. ``timeout_s``: the
        default of each wait (service discovery, then the answer)."""
        _check_timeout(timeout_s)
        self.service = text_query_service(node_name)
        self.timeout_s = float(timeout_s)
        self._closed = False
        self._owned_context: Context | None = None
        self._executor: SingleThreadedExecutor | None = None
        self._thread: threading.Thread | None = None
        if node is None:
            if context is None:
                import rclpy

                context = Context()
                rclpy.init(context=context, domain_id=domain_id)
                self._owned_context = context
            node = Node(f"diff2scene_query_client_{uuid.uuid4().hex[:8]}", context=context)
            self._own_node: Node | None = node
        else:
            self._own_node = None
        self.node = node
        self._client: Client = node.create_client(
            TextQuery, self.service, qos_profile=QUERY_CLIENT_QOS
        )
        if self._own_node is not None:
            self._executor = SingleThreadedExecutor(context=node.context)
            self._executor.add_node(node)
            self._thread = threading.Thread(
                target=self._spin, name="diff2scene-query-client", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ calls

    def query(
        self,
        text: str,
        *,
        top_k: int = 0,
        score_threshold: float = 0.0,
        timeout_s: float | None = None,
    ) -> QueryAnswer:
        """Ask the node and wait for the answer.

        ``top_k``: at most this many instances, best first (0: all). ``score_threshold``: the
        match probability a point needs, in [0, 1] (0: the node's default). ``timeout_s``: for
        the service to appear and, again, for its answer (None: the client's default).
        """
        request = _request(text, top_k=top_k, score_threshold=score_threshold)
        wait_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        return self._call(text, request, wait_s)

    def query_async(
        self,
        text: str,
        *,
        top_k: int = 0,
        score_threshold: float = 0.0,
        timeout_s: float | None = None,
    ) -> Future:
        """Like :meth:`query`, without blocking: an ``rclpy.task.Future`` that completes with the
        :class:`QueryAnswer` or with the exception :meth:`query` would raise.

        Bad arguments raise here at once. The wait runs in a short-lived thread, so awaiting the
        future in a coroutine callback never blocks the caller's executor.
        """
        request = _request(text, top_k=top_k, score_threshold=score_threshold)
        wait_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        # done callbacks run on the node's executor, as those of rclpy's own futures do
        future = Future(executor=self.node.executor)

        def run() -> None:
            try:
                future.set_result(self._call(text, request, wait_s))
            except Exception as exc:  # handed to whoever awaits the future
                future.set_exception(exc)
            # A coroutine awaiting the future is resumed only when its executor wakes up; the
            # result was set from this thread, so nothing else would wake it.
            executor = self.node.executor
            if executor is not None:
                executor.wake()

        threading.Thread(target=run, name="diff2scene-query", daemon=True).start()
        return future

    async def aquery(
        self,
        text: str,
        *,
        top_k: int = 0,
        score_threshold: float = 0.0,
        timeout_s: float | None = None,
    ) -> QueryAnswer:
        """:meth:`query` for asyncio: ``answer = await client.aquery("mug")`` (the wait runs in
        the event loop's default thread pool, so the loop keeps running)."""
        request = _request(text, top_k=top_k, score_threshold=score_threshold)
        wait_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._call, text, request, wait_s)

    def wait_until_available(self, timeout_s: float | None = None) -> None:
        """Block until the service exists; :class:`NodeUnavailableError` after ``timeout_s``."""
        wait_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        if not self._client.wait_for_service(timeout_sec=wait_s):
            raise NodeUnavailableError(self.service, wait_s, self.node.context.get_domain_id())

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Destroy the service client, and the node, executor and context this client made
        (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.node.destroy_client(self._client)
        if self._own_node is not None:
            self._own_node.destroy_node()
        if self._owned_context is not None:
            self._owned_context.try_shutdown()
        self._executor = self._thread = None

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        assert self._executor is not None
        with contextlib.suppress(ExternalShutdownException):
            self._executor.spin()

    def _call(self, text: str, request: TextQuery.Request, timeout_s: float) -> QueryAnswer:
        self.wait_until_available(timeout_s)
        sent_s = time.monotonic()
        future = self._client.call_async(request)
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(timeout_s):
            self._client.remove_pending_request(future)
            raise QueryTimeoutError(self.service, timeout_s)
        latency_s = time.monotonic() - sent_s
        response = future.result()
        if response is None:  # the request was cancelled under us (client closed)
            raise QueryTimeoutError(self.service, timeout_s)
        return answer_from_response(text, response, latency_s=latency_s)


def _check_timeout(timeout_s: float) -> float:
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise InputError("bad_timeout", f"timeout_s must be a positive number, got {timeout_s}")
    return float(timeout_s)


def _request(text: str, *, top_k: int, score_threshold: float) -> TextQuery.Request:
    if not isinstance(text, str):
        raise InputError("bad_query", f"the query must be text, got {type(text).__name__}")
    if not (isinstance(top_k, int) and 0 <= top_k < 2**32):
        raise InputError("bad_query", f"top_k must be a count >= 0 (0: all), got {top_k!r}")
    if not (math.isfinite(score_threshold) and 0.0 <= score_threshold <= 1.0):
        raise InputError(
            "bad_query", f"score_threshold must lie in [0, 1] (0: the node's default), got "
            f"{score_threshold!r}"
        )
    return TextQuery.Request(query=text, score_threshold=float(score_threshold), top_k=top_k)

