"""The fault-injecting processes of the soak test (``bench/soak.py``), each its own process.

``python -m bench.soak_faults node --ros-args ...``
    The real mapping node (``diff2scene_ros.node.main``: same parameters, signals, shutdown and
    autosave) whose 2D model raises on every 7th keyframe it is given, and which journals every
    count it makes of a bad input with the input's stamp (:func:`journal_counts`).
``python -m bench.soak_faults preroll --out FILE --first-stamp-ns NS``
    Colour/depth pairs before any ``CameraInfo`` exists (a camera driver that has not sent its
    calibration yet): the node must count them as ``missing_camera_info``.
``python -m bench.soak_faults inject --out FILE --every-s S --stop FILE``
    Malformed messages on the node's input topics, one kind after the other, stamped between
    the frames of the bag being played (so that they disturb no real frame, and so that no real
    frame has their stamp): see :data:`KINDS`.
``python -m bench.soak_faults storm --out FILE --clients N --queries N``
    A query storm: N concurrent :class:`~diff2scene_ros.client.QueryClient` s (the product's
    client and its service QoS) in one process, hostile texts among the queries.

Each writes what it did as JSON to ``--out``, with the stamp of every fault it injected; the
soak finds each of those stamps in the node's journal under the counter of its kind
(:func:`bench.soak.fault_books`), so a count that something else caused is never taken for an
injected fault.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

#: Malformed-message kinds the injector cycles through → the node counter that must count it
#: (``/diagnostics`` key). Other inputs may go to the same counter ("pose_jump" costs two frames:
#: the jumped one and the next real one, compared with the jumped pose; "stale_stamp" also
#: counts real frames that arrive late): the soak counts a fault as counted only when the node
#: journaled its own stamp under its own counter.
KINDS: dict[str, str] = {
    "wrong_encoding": "skipped_bad_color_encoding",
    "size_mismatch": "skipped_size_mismatch",
    "nan_inf_depth": "frames_skipped_no_valid_depth",
    "empty_image": "skipped_bad_image_size",
    "truncated_data": "skipped_truncated_image",
    "stale_stamp": "skipped_stale_stamp",
    "future_stamp": "skipped_stamp_jump",
    "pose_jump": "frames_skipped_pose_jump",
    "bad_camera_info": "rejected_bad_camera_info",
    "nonfinite_pose": "rejected_nonfinite_pose",
}
#: Kinds injected outside the message cycle → their counters.
OTHER_KINDS: dict[str, str] = {
    "missing_camera_info": "skipped_missing_camera_info",
    "segmenter_exception": "segment_errors_InjectedSegmenterError",
}
#: Kinds told apart by their counter's name rather than by stamps: the counter is named after
#: an exception type that only this soak raises, so everything in it was injected.
TAGGED_BY_TYPE: frozenset[str] = frozenset({"segmenter_exception"})
#: The 2D model raises on every n-th keyframe (``SEGMENTER_FAULT_EVERY_ENV`` overrides it: a
#: short test run has few keyframes).
SEGMENTER_FAULT_EVERY = 7
SEGMENTER_FAULT_EVERY_ENV = "D2S_SOAK_SEGMENTER_FAULT_EVERY"
#: Environment variable naming the file where the node records the 2D-model failures it injected.
FAULT_RECORD_ENV = "D2S_SOAK_FAULT_RECORD"
#: Environment variable naming the file where the node records the stalls of its Python threads.
STALL_RECORD_ENV = "D2S_SOAK_STALL_RECORD"
#: Environment variable naming the file where the node journals each count of a bad input, one
#: line ``<counter> <stamp ns or ->`` per count (:func:`journal_counts`).
JOURNAL_ENV = "D2S_SOAK_COUNT_JOURNAL"
#: Topics of the node (root namespace) and the frames of a ``diff2scene synth`` bag.
COLOR = "/camera/color/image_raw"
DEPTH = "/camera/depth/image_rect_raw"
CAMERA_INFO = "/camera/color/camera_info"
WORLD_FRAME = "map"
CAMERA_FRAME = "camera_color_optical_frame"
#: Recorded period of the soak bag's camera, in nanoseconds (faults go half a period after a
#: real frame: further than the colour/depth pairing slop from both neighbours).
DEFAULT_PERIOD_NS = 100_000_000

#: Texts of the query storm: ordinary ones (must be answered) and hostile ones (must be answered
#: or refused in words, never crash or hang the node).
ORDINARY_QUERIES = ("chair", "the table", "a lamp next to the sofa", "the door", "plant")
HOSTILE_QUERIES = (
    "",
    "x" * 10_000,
    "die Tasse 🍵 на столе 桌子上的杯子 ☕️ العربية",
    "\x01\x02\x1b[31mmug\x7f\t\r\n\x0b",
    "the chair left of the chair left of the chair above below nothing",
    "between and near of the the the",
    "left of",
    "🪑" * 500,
    "   ",
    "table' OR 1=1; DROP TABLE maps; --",
)


class InjectedSegmenterError(RuntimeError):
    """What the soak's 2D model raises on every :data:`SEGMENTER_FAULT_EVERY`-th keyframe."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------- node


class CountJournal:
    """Lines ``<counter> <stamp ns or ->``, one per count, appended to a file as they happen
    (line-buffered, so a reader sees every whole line written so far)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, counter: str, stamp_ns: int | None) -> None:
        with self._lock:
            self._file.write(f"{counter} {'-' if stamp_ns is None else stamp_ns}\n")


def read_journal(path: Path) -> list[tuple[str, int | None]]:
    """The (counter, stamp) entries of a :class:`CountJournal` file (a torn last line left out)."""
    if not path.is_file():
        return []
    entries: list[tuple[str, int | None]] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and (parts[1] == "-" or parts[1].lstrip("-").isdigit()):
            entries.append((parts[0], None if parts[1] == "-" else int(parts[1])))
    return entries


def journal_counts(runtime: Any, journal: Any) -> None:
    """Journal every count of a bad input that ``runtime`` makes, with the input's stamp (once
    per process).

    The frame assembler tells its own listener (every ``skipped_*`` / ``rejected_*`` count);
    the mapper's verdicts (``frames_skipped_*``) are read per frame here: its ``integrate``
    runs in one thread at a time (the pipeline's lock) and counts at most one skip, of the
    frame it was given, so a skip counted during the call is that frame's.
    """
    from diff2scene.mapping.mapper import Mapper

    runtime.assembler.listen(journal)
    integrate = Mapper.integrate  # every mapper of the process (a map load makes a new one)

    def journaled(self: Mapper, frame: Any) -> bool:
        before = self.stats.skipped.total()
        integrated = bool(integrate(self, frame))
        if self.stats.skipped.total() > before:
            journal(f"frames_skipped_{self.stats.last_skip_reason}", int(frame.stamp_ns))
        return integrated

    Mapper.integrate = journaled  # type: ignore[method-assign]


def run_node(ros_args: list[str]) -> None:
    """The node's own ``main`` with a 2D model that fails every 7th keyframe, journaling its
    counts of bad input when :data:`JOURNAL_ENV` names a file."""
    from diff2scene_ros import node as node_module

    base = node_module.MappingNode
    journal_path = os.environ.get(JOURNAL_ENV)

    class FaultyModelNode(base):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if journal_path:
                journal_counts(self.runtime, CountJournal(Path(journal_path)))
            segmenter = self.runtime.segmenter
            segment = segmenter.segment
            calls = itertools.count(1)
            record = os.environ.get(FAULT_RECORD_ENV)
            every = int(os.environ.get(SEGMENTER_FAULT_EVERY_ENV, SEGMENTER_FAULT_EVERY))

            def failing_segment(frame: Any) -> Any:
                n = next(calls)
                if n % every == 0:
                    if record:
                        _write_json(Path(record), {"segmenter_exception": n // every})
                    raise InjectedSegmenterError(f"injected failure on keyframe call {n}")
                return segment(frame)

            segmenter.segment = failing_segment

    node_module.MappingNode = FaultyModelNode  # type: ignore[misc]
    stall_record = os.environ.get(STALL_RECORD_ENV)
    if stall_record:
        threading.Thread(target=_watch_stalls, args=(Path(stall_record),), daemon=True).start()
    node_module.main(["soak_node", *ros_args])


def _watch_stalls(out: Path, period_s: float = 0.01, report_s: float = 0.25) -> None:
    """Record when a Python thread of the node could not run for ``report_s`` or longer (the
    GIL held by native code, or no CPU): the node's callbacks cannot take messages then."""
    stalls: list[tuple[float, float]] = []
    while True:
        before = time.monotonic()
        time.sleep(period_s)
        late_s = time.monotonic() - before - period_s
        if late_s >= report_s:
            stalls.append((time.time() - late_s, late_s))
            _write_json(out, {"stalls": stalls})


# ---------------------------------------------------------------------------- messages


def _stamp(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def _image(stamp_ns: int, width: int, height: int, *, encoding: str, data: bytes,
           step: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=0)
    msg.header.stamp = _stamp(stamp_ns)
    msg.header.frame_id = CAMERA_FRAME
    msg.data = data
    return msg


def _rgb(stamp_ns: int, width: int, height: int) -> Any:
    rng = np.random.default_rng(stamp_ns % 2**32)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return _image(stamp_ns, width, height, encoding="rgb8", data=pixels.tobytes(),
                  step=3 * width)


def _depth_m(stamp_ns: int, width: int, height: int, value: float = 2.0) -> Any:
    depth = np.full((height, width), value, np.float32)
    return _image(stamp_ns, width, height, encoding="32FC1", data=depth.tobytes(),
                  step=4 * width)


class _Io:
    """One rclpy node publishing on the mapping node's inputs and watching its depth and TF
    topics (to stamp faults between real frames and to jump from the current pose)."""

    def __init__(self, name: str, *, rate: float = 1.0) -> None:
        """``rate``: the speed factor the bag is played at (to tell a late depth image)."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        rclpy.init()
        self.node = rclpy.create_node(name)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.color = self.node.create_publisher(Image, COLOR, reliable)
        self.depth = self.node.create_publisher(Image, DEPTH, reliable)
        self.info = self.node.create_publisher(CameraInfo, CAMERA_INFO, reliable)
        self.tf = self.node.create_publisher(TFMessage, "/tf", reliable)
        self._lock = threading.Lock()
        self._depth_event = threading.Event()
        self.last_depth_ns = 0
        self.last_size = (0, 0)
        self.last_tf: Any = None
        self._rate = rate
        #: Arrival time here minus the bag's pace (stamp / rate) of the last real depth images.
        self._offsets_s: deque[float] = deque(maxlen=20)
        self._last_depth_late_s = 0.0
        self._last_depth_at = time.monotonic()
        self.node.create_subscription(Image, DEPTH, self._on_depth, reliable)
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, reliable)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._executor.spin, daemon=True)
        self._spinner.start()

    def _on_depth(self, msg: Any) -> None:
        if msg.header.frame_id != CAMERA_FRAME or msg.encoding == "32FC1":
            return  # one of ours
        now = time.monotonic()
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            self.last_depth_ns = stamp_ns
            self.last_size = (msg.width, msg.height)
            self._offsets_s.append(now - stamp_ns / 1e9 / self._rate)
            self._last_depth_late_s = self._offsets_s[-1] - min(self._offsets_s)
            self._last_depth_at = now
        self._depth_event.set()

    def lag_s(self) -> float:
        """How far behind the camera this process is now: how late the newest real depth image
        arrived here (against the earliest of the last 20 at the bag's pace), plus the time
        since it arrived."""
        with self._lock:
            return self._last_depth_late_s + time.monotonic() - self._last_depth_at

    def _on_tf(self, msg: Any) -> None:
        for t in msg.transforms:
            if t.child_frame_id == CAMERA_FRAME and math.isfinite(t.transform.translation.x):
                with self._lock:
                    self.last_tf = t

    def newest_depth_ns(self) -> int:
        """Stamp of the newest real depth image seen."""
        with self._lock:
            return self.last_depth_ns

    def next_real_frame(self, timeout_s: float) -> tuple[int, tuple[int, int]] | None:
        """Stamp and size of the next real depth image seen (None: the stream stopped)."""
        self._depth_event.clear()
        if not self._depth_event.wait(timeout_s):
            return None
        with self._lock:
            return self.last_depth_ns, self.last_size

    def wait_for_subscribers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pubs = (self.color, self.depth, self.info, self.tf)
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
            time.sleep(0.05)
        time.sleep(0.5)  # discovery of both sides settles

    def close(self) -> None:
        from rclpy.duration import Duration

        for pub in (self.color, self.depth, self.info, self.tf):
            pub.wait_for_all_acked(Duration(seconds=5.0))
        self._executor.shutdown()
        self._spinner.join(timeout=10.0)  # no callback may run while the node is destroyed
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown()


def _camera_info(stamp_ns: int, width: int, height: int, *, broken: bool) -> Any:
    from sensor_msgs.msg import CameraInfo

    f = 0.0 if broken else 0.8 * width
    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    msg.header.stamp = _stamp(stamp_ns)
    msg.header.frame_id = CAMERA_FRAME
    msg.k = [f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, width / 2, 0.0, 0.0, f, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def _transform(stamp_ns: int, base: Any, dx_m: float) -> Any:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    t = TransformStamped()
    t.header.stamp = _stamp(stamp_ns)
    t.header.frame_id = WORLD_FRAME
    t.child_frame_id = CAMERA_FRAME
    t.transform.rotation = base.transform.rotation
    t.transform.translation.x = base.transform.translation.x + dx_m
    t.transform.translation.y = base.transform.translation.y
    t.transform.translation.z = base.transform.translation.z
    return TFMessage(transforms=[t])


def inject_one(io: _Io, kind: str, stamp_ns: int, size: tuple[int, int],
               period_ns: int) -> int | None:
    """Publish one malformed message (or a pair) of ``kind`` half a period after the real frame
    at ``stamp_ns``; returns the stamp the node must count it under (None: nothing sent). Depth
    goes out before colour so the pair is complete when colour arrives. Every stamp is off the
    camera's grid by half a period (the stale and future ones too), so no real frame has it."""
    w, h = size
    s = stamp_ns + period_ns // 2
    if kind == "wrong_encoding":
        io.depth.publish(_depth_m(s, w, h))
        io.color.publish(_image(s, w, h, encoding="yuv422", data=bytes(2 * w * h), step=2 * w))
    elif kind == "size_mismatch":
        io.depth.publish(_depth_m(s, w, h))
        io.color.publish(_rgb(s, w // 2, h // 2))
    elif kind == "nan_inf_depth":
        depth = np.full((h, w), np.nan, np.float32)
        depth[::2] = np.inf
        depth[1::4] = -np.inf
        io.depth.publish(_image(s, w, h, encoding="32FC1", data=depth.tobytes(), step=4 * w))
        io.color.publish(_rgb(s, w, h))
    elif kind == "empty_image":
        io.depth.publish(_depth_m(s, w, h))
        io.color.publish(_image(s, 0, 0, encoding="rgb8", data=b"", step=0))
    elif kind == "truncated_data":
        io.depth.publish(_depth_m(s, w, h))
        full = _rgb(s, w, h)
        full.data = bytes(full.data)[: len(full.data) // 2]
        io.color.publish(full)
    elif kind == "stale_stamp":
        s -= 2_000_000_000
        io.color.publish(_rgb(s, w, h))
    elif kind == "future_stamp":
        s += 3_600_000_000_000
        io.color.publish(_rgb(s, w, h))
    elif kind == "pose_jump":
        with io._lock:
            base = io.last_tf
        if base is None:
            return None
        io.tf.publish(_transform(s, base, 3.0))
        io.depth.publish(_depth_m(s, w, h))
        io.color.publish(_rgb(s, w, h))
    elif kind == "bad_camera_info":
        io.info.publish(_camera_info(s, w, h, broken=True))
    elif kind == "nonfinite_pose":
        with io._lock:
            base = io.last_tf
        if base is None:
            return None
        io.tf.publish(_transform(s, base, math.nan))
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return s


def _colour_images(kind: str) -> int:
    """Colour images one injection of ``kind`` publishes (for the frame books)."""
    return 0 if kind in ("bad_camera_info", "nonfinite_pose") else 1


def run_inject(out: Path, every_s: float, stop: Path, period_ns: int, rate: float) -> None:
    """Inject one fault every ``every_s`` after a real frame, the kinds in turn, until ``stop``
    exists. A fault stamped after a real frame must reach the node before the next real frame,
    or it is a stale frame, not the fault it was meant to be: when this process is behind the
    camera by more than 30 % of a frame period (a newer real frame already seen, or the last one
    seen late), the fault waits for a later frame (counted in ``withheld_late``)."""
    io = _Io("soak_injector", rate=rate)
    max_lag_s = 0.3 * period_ns / 1e9 / rate
    injected = dict.fromkeys(KINDS, 0)
    stamps: dict[str, list[int]] = {kind: [] for kind in KINDS}
    color_published = 0
    withheld_late = 0
    cycle = itertools.cycle(KINDS)
    kind = next(cycle)

    def record() -> None:
        _write_json(out, {"injected": injected, "stamps": stamps,
                          "color_published": color_published, "withheld_late": withheld_late})

    try:
        io.wait_for_subscribers(60.0)
        next_due = time.monotonic() + every_s
        while not stop.exists():
            seen = io.next_real_frame(timeout_s=1.0)
            if seen is None or time.monotonic() < next_due:
                continue
            time.sleep(0.01)  # the real depth image reaches the node first
            if io.newest_depth_ns() != seen[0] or io.lag_s() > max_lag_s:
                withheld_late += 1
                continue
            stamp = inject_one(io, kind, seen[0], seen[1], period_ns)
            if stamp is not None:
                injected[kind] += 1
                stamps[kind].append(stamp)
                color_published += _colour_images(kind)
                kind = next(cycle)
                next_due = time.monotonic() + every_s
            record()
    finally:
        io.close()
        record()


def run_preroll(out: Path, first_stamp_ns: int, count: int, width: int, height: int) -> None:
    io = _Io("soak_preroll")
    try:
        io.wait_for_subscribers(60.0)
        stamps = []
        for i in range(count):
            s = first_stamp_ns - (count - i) * 200_000_000
            io.depth.publish(_depth_m(s, width, height))
            io.color.publish(_rgb(s, width, height))
            stamps.append(s)
            time.sleep(0.05)
        _write_json(out, {"injected": {"missing_camera_info": count},
                          "stamps": {"missing_camera_info": stamps}, "color_published": count})
    finally:
        io.close()


# ---------------------------------------------------------------------------- query storm


def run_storm(out: Path, clients: int, queries: int, node_name: str, timeout_s: float) -> None:
    """``clients`` threads, each with its own :class:`~diff2scene_ros.client.QueryClient` (what a
    planner uses, with its service QoS) on one shared node, ``queries`` calls each."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from diff2scene.errors import Diff2SceneError
    from diff2scene_ros.client import QueryClient, QueryTimeoutError

    rclpy.init()
    node = rclpy.create_node("soak_storm")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    texts = [*ORDINARY_QUERIES, *HOSTILE_QUERIES]
    lock = threading.Lock()
    outcome: dict[str, Any] = {"sent": 0, "answered_success": 0, "answered_refused": 0,
                               "timeouts": 0, "internal_errors": 0,
                               "ordinary_refused": 0, "client_errors": 0, "latency_s": [],
                               "refusals": {}, "warmup_sent": 0, "warmup_requests_lost": 0,
                               "timeout_detail": [], "client_error_detail": []}

    # Clients are made here, one thread, and used only once every one of them sees the service.
    service_clients = [QueryClient(node_name, node=node, timeout_s=timeout_s)
                       for _ in range(clients)]
    ready = True
    for client in service_clients:
        try:
            client.wait_until_available(60.0)
        except Diff2SceneError:
            ready = False

    def warm_up(client: QueryClient) -> bool:
        """One answered query before the counted ones, so that the storm measures the node and
        not discovery: the service being visible does not mean that it already knows this
        client's response reader. Lost warm-up requests are counted and reported, not hidden."""
        for _ in range(12):
            with lock:
                outcome["warmup_sent"] += 1
            try:
                client.query(ORDINARY_QUERIES[0], timeout_s=5.0)
                return True
            except QueryTimeoutError:
                with lock:
                    outcome["warmup_requests_lost"] += 1
        return False

    t_start = time.monotonic()

    def client_loop(k: int) -> None:
        client = service_clients[k]
        if not ready or not warm_up(client):
            with lock:
                outcome["client_errors"] += queries
            return
        for i in range(queries):
            text = texts[(k * 7 + i) % len(texts)]
            t0 = time.monotonic()
            with lock:
                outcome["sent"] += 1
            try:
                answer = client.query(text, top_k=i % 4, timeout_s=timeout_s)
            except QueryTimeoutError:
                with lock:
                    outcome["timeouts"] += 1
                    outcome["timeout_detail"].append(
                        {"client": k, "index": i, "text": text[:20],
                         "sent_at_s": round(t0 - t_start, 2)})
                continue
            except Diff2SceneError as exc:  # e.g. a malformed cloud in the answer
                with lock:
                    outcome["client_errors"] += 1
                    outcome["client_error_detail"].append(str(exc)[:200])
                continue
            with lock:
                outcome["latency_s"].append(time.monotonic() - t0)
                if answer.success:
                    outcome["answered_success"] += 1
                else:
                    outcome["answered_refused"] += 1
                    reason = answer.message[:60]
                    outcome["refusals"][reason] = outcome["refusals"].get(reason, 0) + 1
                    if answer.message.startswith("internal error"):
                        outcome["internal_errors"] += 1
                    elif text in ORDINARY_QUERIES and "nothing mapped" not in answer.message:
                        outcome["ordinary_refused"] += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(outcome.pop("latency_s"))
    outcome["duration_s"] = time.monotonic() - t_start
    outcome["timeout_query_indices"] = sorted(d["index"] for d in outcome["timeout_detail"])
    outcome["latency_p50_s"] = latencies[len(latencies) // 2] if latencies else math.nan
    outcome["latency_max_s"] = latencies[-1] if latencies else math.nan
    outcome["unexpected"] = (outcome["timeouts"] + outcome["internal_errors"]
                             + outcome["ordinary_refused"] + outcome["client_errors"])
    _write_json(out, outcome)
    for client in service_clients:
        client.close()
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["node"]:
        run_node(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.soak_faults")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("inject")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every-s", type=float, default=2.0)
    p.add_argument("--stop", type=Path, required=True)
    p.add_argument("--period-ns", type=int, default=DEFAULT_PERIOD_NS)
    p.add_argument("--rate", type=float, default=2.0, help="speed factor of the bag's playback")
    p = sub.add_parser("preroll")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--first-stamp-ns", type=int, required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p = sub.add_parser("storm")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--node-name", default="/diff2scene", help="the mapping node's name")
    p.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.role == "inject":
        run_inject(args.out, args.every_s, args.stop, args.period_ns, args.rate)
    elif args.role == "preroll":
        run_preroll(args.out, args.first_stamp_ns, args.count, args.width, args.height)
    else:
        run_storm(args.out, args.clients, args.queries, args.node_name, args.timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
