"""The online pipeline: frames in, a semantic voxel map out, queries answered.

One object drives the core for every front end (ROS node, bag replay, evaluation):

    frame ──► Mapper.integrate ──► KeyframeSelector ──► bounded keyframe queue
                                                         │ (worker thread)
                                                         ▼
                         Segmenter2D.segment ──► MaskUnprojector.accumulate ──► SemanticMap

Mapping never waits for the 2D model: keyframes wait in a bounded queue whose overflow policy
is explicit — ``drop_oldest`` (live robots: the newest view matters most; each drop is counted)
or ``block`` (bag replay: every keyframe is processed, the replay slows down instead).

Every stage runs supervised (:mod:`diff2scene.supervise`): an exception in fusion, the 2D
model, unprojection or the 3D network costs the item it happened on, is counted and logged
once, and a stage failing again and again is switched off while the others go on
(:meth:`Pipeline.stage_status`). Nothing waits without a limit: ``block``, :meth:`Pipeline.flush`
and :meth:`Pipeline.close` take timeouts and report what they gave up on, and the 2D worker is a
daemon thread, so a hung model can neither stall the caller nor keep the process alive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diff2scene.config import to_dict
from diff2scene.errors import Diff2SceneError, InputError
from diff2scene.mapping.keyframes import KeyframeConfig, KeyframeSelector
from diff2scene.mapping.mapper import Mapper, MapperConfig
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.mapping.spill import SpillStore
from diff2scene.mapping.unproject import MaskUnprojector, UnprojectConfig
from diff2scene.memory import return_freed_blocks_to_system, rss_mib
from diff2scene.net3d.inference import Net3D, Net3DConfig, refresh_map_features
from diff2scene.priority import PriorityGate
from diff2scene.segmentation.base import Segmenter2D
from diff2scene.supervise import Failure, StageStatus, StageSupervisor, SupervisorConfig
from diff2scene.types import Frame

_LOG = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """How the stages are wired; each stage's own settings live in its own config."""

    mapper: MapperConfig = field(default_factory=MapperConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    unproject: UnprojectConfig = field(default_factory=UnprojectConfig)
    #: Keyframes waiting for the 2D model at most; beyond it the overflow policy applies.
    keyframe_queue_size: int = 4
    #: "drop_oldest" (live: count and drop) or "block" (replay: wait for the 2D model).
    overflow_policy: Literal["drop_oldest", "block"] = "drop_oldest"
    #: Run the 2D model in a worker thread (True) or inline in :meth:`Pipeline.add_frame`.
    threaded: bool = True
    #: Memberships kept per voxel (top-k of (mask id, B3d) pairs).
    members_per_voxel: int = 8
    #: The 3D network over the map (geometric branch): "auto" runs it when ``net3d.checkpoint``
    #: names a trained network (an untrained one would only add noise to the ensemble), "on"
    #: always (tests, benchmarks), "off" never (queries use the unprojected 2D masks alone).
    net3d_mode: Literal["auto", "on", "off"] = "auto"
    #: The 3D network (its checkpoint comes from ``diff2scene train``).
    net3d: Net3DConfig = field(default_factory=Net3DConfig)
    #: Refresh the 3D features after every n-th segmented keyframe (and on flush); 0 = on
    #: flush only.
    net3d_every_keyframes: int = 10
    #: Longest wait of ``add_frame`` for room in the keyframe queue under the ``block`` policy,
    #: in seconds; the keyframe is then given up on (counted in ``keyframes_abandoned``). Far
    #: above the slowest keyframe measured (27.7 s: the diffusion model at 512x512, 2-core CPU).
    block_timeout_s: float = 300.0
    #: Longest wait of ``flush()`` for the queued keyframes, in seconds; also ``close()``'s
    #: timeout unless the caller gives one (a node gives its shutdown time).
    flush_timeout_s: float = 600.0
    #: What ``close()`` does with keyframes still queued: "finish" them (within its timeout)
    #: or "abandon" them (counted); the keyframe already in the 2D model is waited for.
    close_policy: Literal["finish", "abandon"] = "finish"
    #: When a stage that keeps failing (fusion, 2D model, unprojection, 3D network) is
    #: switched off.
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    #: Longest wait of a frame's fusion (and of a keyframe's surface refresh) for queries
    #: running at that moment, in seconds; 0 = never wait (the default). Open3D holds the
    #: interpreter lock while it fuses, so a query's Python steps run between integrations;
    #: a wait lets slow queries (e.g. a cold CLIP text forward) finish first, at the cost of
    #: frames under a continuous query load (see :mod:`diff2scene.priority`). Waits are
    #: counted (``fusion_yield_*``).
    yield_to_queries_max_s: float = 0.0
    #: Most memory the whole process should hold (resident set), MiB; 0 = no bound. When the
    #: map would take the process past it, the blocks of per-voxel state (colours,
    #: memberships, view counts; 64Ki voxels each) that no keyframe touched for longest go to
    #: a spill store on disk and come back when a keyframe sees them again. Set aside first:
    #: what the process held when the pipeline started (libraries, models), the TSDF working
    #: set, the voxel index, coordinates and the mask bank (these stay in memory), and a tenth
    #: of the budget for transients (snapshots, query engines). Queries search the voxels in
    #: memory and say how many they left out. Not with the 3D branch (its features are
    #: recomputed over the whole map).
    memory_budget_mb: float = 0.0
    #: Directory of the spill store; "" = a private temporary directory. The node and the
    #: replay put it beside the map they save. Files an earlier process left there are removed.
    spill_dir: str = ""
    #: Voxels per block that leaves memory and comes back (a power of two): smaller blocks
    #: follow the camera more closely, at more files and more bookkeeping per keyframe.
    spill_block_voxels: int = 1 << 16

    @property
    def net3d_active(self) -> bool:
        """Whether the pipeline runs the 3D network (see ``net3d_mode``)."""
        if self.net3d_mode == "auto":
            return self.net3d.checkpoint is not None
        return self.net3d_mode == "on"

    def __post_init__(self) -> None:
        if self.keyframe_queue_size < 1:
            raise ValueError("keyframe_queue_size must be >= 1")
        if self.members_per_voxel < 1:
            raise ValueError("members_per_voxel must be >= 1")
        if self.net3d_every_keyframes < 0:
            raise ValueError("net3d_every_keyframes must be >= 0")
        if not (self.block_timeout_s > 0 and self.flush_timeout_s > 0):
            raise ValueError("block_timeout_s and flush_timeout_s must be > 0 (no endless waits)")
        if self.yield_to_queries_max_s < 0:
            raise ValueError("yield_to_queries_max_s must be >= 0")
        if not self.memory_budget_mb >= 0:
            raise ValueError(f"memory_budget_mb must be >= 0, got {self.memory_budget_mb}")
        n = self.spill_block_voxels
        if n < 1024 or n & (n - 1):
            raise ValueError(f"spill_block_voxels must be a power of two >= 1024, got {n}")
        if self.memory_budget_mb and self.net3d_active:
            raise ValueError(
                "memory_budget_mb cannot bound a map with the 3D branch (net3d_mode / "
                "net3d.checkpoint): its features are recomputed over the whole map in memory; "
                "set net3d_mode: off, or memory_budget_mb: 0"
            )


@dataclass
class PipelineStats:
    frames_in: int = 0
    keyframes_selected: int = 0
    keyframes_segmented: int = 0
    keyframes_dropped: int = 0
    #: Failures inside the 2D stage by reason (the map is kept, the keyframe is skipped).
    segment_errors: Counter[str] = field(default_factory=Counter)
    #: Keyframes given up on unsegmented, by reason: "block_timeout" (``add_frame`` waited
    #: ``block_timeout_s`` for room in the queue), "close" (dropped by ``close()``).
    keyframes_abandoned: Counter[str] = field(default_factory=Counter)
    #: Frames whose fusion raised, by exception type (the frame is skipped, the map kept).
    integrate_errors: Counter[str] = field(default_factory=Counter)
    segment_s_total: float = 0.0
    integrate_s_total: float = 0.0
    net3d_runs: int = 0
    net3d_s_total: float = 0.0
    #: Keyframes after which the map stayed over its share of ``memory_budget_mb`` with
    #: nothing left to spill (what stays in memory outgrew the budget).
    memory_budget_short: int = 0


@dataclass(frozen=True)
class FlushReport:
    """What :meth:`Pipeline.flush` got done before its timeout."""

    #: Every queued keyframe was processed and the map brought up to date in time.
    completed: bool
    #: Keyframes still queued or inside the 2D model when flush gave up (they stay queued).
    keyframes_pending: int
    #: The 3D features were refreshed (False without a 3D network, when its stage is off or
    #: failed, or when no time was left).
    net3d_refreshed: bool
    waited_s: float


@dataclass(frozen=True)
class CloseReport:
    """What :meth:`Pipeline.close` finished and what it gave up on."""

    policy: Literal["finish", "abandon"]
    #: Every keyframe was finished and the worker stopped within the timeout.
    completed: bool
    #: Keyframes segmented while closing.
    keyframes_finished: int
    #: Queued keyframes dropped unsegmented (by policy, or because time ran out).
    keyframes_abandoned: int
    #: The 2D worker has ended; False means it is stuck in the model (it is a daemon thread,
    #: so it will not keep the process alive; its keyframe may still reach the map later).
    worker_stopped: bool
    duration_s: float


class Pipeline:
    """Owns the map; thread-safe: frames, queries and saves may come from different threads."""

    def __init__(
        self,
        config: PipelineConfig,
        segmenter: Segmenter2D,
        *,
        on_stage_time: Callable[[str, float], None] | None = None,
    ) -> None:
        """``on_stage_time(stage, seconds)``, when given, is called after every fusion
        ("fusion"), 2D model ("segment2d"), unprojection ("unproject") and 3D refresh
        ("net3d") with its wall time, from the thread that ran it (replay's timing report
        needs per-item latencies, which the running totals of :class:`PipelineStats` lose)."""
        self.config = config
        self._on_stage_time = on_stage_time
        self.segmenter = segmenter
        self.mapper = Mapper(config.mapper)
        self.map = SemanticMap(
            config.mapper.voxel_size_m, members_per_voxel=config.members_per_voxel,
            block_rows=config.spill_block_voxels,
        )
        self.map.metadata["pipeline_config"] = to_dict(config)
        self._spill: SpillStore | None = None
        #: Resident set when the pipeline started, bytes (the budget's fixed part).
        self._rss_at_start_b = 0
        if config.memory_budget_mb:
            return_freed_blocks_to_system()
            self._spill = SpillStore(config.spill_dir or None)
            self.map.attach_spill_store(self._spill)
            self._rss_at_start_b = int((rss_mib() or 0.0) * 2**20)
        self.keyframes = KeyframeSelector(config.keyframes)
        self.unprojector = MaskUnprojector(config.unproject)
        self.stats = PipelineStats()
        #: Guards the map and the mapper: held briefly by integration, unprojection, queries.
        self.lock = threading.RLock()
        #: Queries hold it (a :class:`~diff2scene.query.session.QuerySession` given it);
        #: fusion and surface refreshes wait their turn, boundedly.
        self.priority = PriorityGate(config.yield_to_queries_max_s)
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=config.keyframe_queue_size)
        self._next_keyframe_id = 0
        self.net3d = Net3D.from_config(config.net3d) if config.net3d_active else None
        self.supervisor = StageSupervisor(config.supervisor, logger=_LOG)
        self._fusion = self.supervisor.stage("fusion")
        self._model_2d = self.supervisor.stage("segment2d")
        self._unproject = self.supervisor.stage("unproject")
        self._net3d_stage = self.supervisor.stage("net3d")
        #: Serialises 3D refreshes (worker, flush, and one left running past a deadline).
        self._net3d_lock = threading.Lock()
        #: Keyframes the worker has finished with; a block timeout remembers it to tell a
        #: stuck worker from a slow one.
        self._worker_progress = 0
        self._stalled_at_progress: int | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self._close_report: CloseReport | None = None
        if config.threaded:
            self._worker = threading.Thread(target=self._work, name="segmenter2d", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ input

    def add_frame(self, frame: Frame) -> bool:
        """Integrate ``frame``; queue it for the 2D model if it is a keyframe.

        Returns whether the frame was integrated. Never raises for a bad frame (it is counted
        by the mapper) nor for a failing fusion (counted in ``integrate_errors``); never blocks
        on the 2D model unless the policy is ``block``, and then for ``block_timeout_s`` at
        most. Raises :class:`~diff2scene.errors.Diff2SceneError` once the pipeline is closed.
        """
        if self._closed:
            raise Diff2SceneError("pipeline is closed")
        self.stats.frames_in += 1
        self.priority.wait_turn()
        t0 = time.perf_counter()
        with self.lock:
            fused = self._fusion.call(self.mapper.integrate, frame)
        fusion_s = time.perf_counter() - t0
        self.stats.integrate_s_total += fusion_s
        if self._on_stage_time is not None:
            self._on_stage_time("fusion", fusion_s)
        if isinstance(fused, Failure):
            self.stats.integrate_errors[fused.key] += 1
            return False
        integrated = fused
        if not integrated or not self.keyframes.is_keyframe(frame):
            return integrated
        self.stats.keyframes_selected += 1
        if not self.config.threaded:
            self._segment(frame)
            return True
        if self.config.overflow_policy == "block":
            self._put_waiting(frame)
            return True
        while True:
            try:
                self._queue.put_nowait(frame)
                return True
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.stats.keyframes_dropped += 1
                except queue.Empty:
                    pass

    def _put_waiting(self, frame: Frame) -> None:
        """Queue ``frame`` under the ``block`` policy: wait for room, but not forever."""
        # A worker that finished nothing since the last timeout is stuck, not slow: waiting
        # the full timeout again would stall the caller that long for every keyframe.
        stuck = self._stalled_at_progress == self._worker_progress
        try:
            if stuck:
                self._queue.put_nowait(frame)
            else:
                self._queue.put(frame, timeout=self.config.block_timeout_s)
            return
        except queue.Full:
            self.stats.keyframes_abandoned["block_timeout"] += 1
        if not stuck:
            self._stalled_at_progress = self._worker_progress
            _LOG.warning(
                "keyframe %d abandoned: the 2D model took no keyframe for %.0f s "
                "(block_timeout_s); until it does, keyframes that find the queue full are "
                "abandoned at once (counted in keyframes_abandoned)",
                frame.index, self.config.block_timeout_s,
            )

    # ------------------------------------------------------------------ 2D stage

    def _work(self) -> None:
        while True:
            frame = self._queue.get()
            try:
                if frame is None:
                    return
                self._segment(frame)
            except Exception as exc:  # the stages catch their own; this keeps the thread alive
                self.supervisor.stage("keyframe_worker").record_failure(exc)
                self.stats.segment_errors[type(exc).__name__] += 1
            finally:
                self._worker_progress += 1
                self._queue.task_done()

    def _segment(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        # A model failure costs this keyframe, never the map (counted, logged once per type).
        masks = self._model_2d.call(self.segmenter.segment, frame)
        if isinstance(masks, Failure):
            self.stats.segment_errors[masks.key] += 1
            return
        t1 = time.perf_counter()
        self.stats.segment_s_total += t1 - t0
        if self._on_stage_time is not None:
            self._on_stage_time("segment2d", t1 - t0)
        if not self._unproject.enabled:
            self.stats.segment_errors[self._unproject.skip_disabled().key] += 1
            return
        try:
            self.priority.wait_turn()
            with self.lock:
                # The keyframe's own view was integrated already; make its voxels addressable.
                self.map.apply_surface_update(self.mapper.update_voxels())
                smap = self.map
                # A read-only view: voxel rows are append-only, so it stays valid unlocked;
                # the boxes (a copy) let the projection skip what the keyframe cannot see.
                points, boxes = smap.points_m, smap.chunk_boxes()
            # The projection is the expensive part and reads nothing that changes: fusion
            # and queries go on meanwhile; only the merge into the map takes the lock.
            unprojection = self.unprojector.unproject(
                masks.masks, frame.depth_m, frame.intrinsics, frame.T_world_camera, points,
                boxes=boxes,
            )
            with self.lock:
                if self.map is not smap:
                    raise InputError("map_replaced", "a map was loaded while this keyframe ran")
                self.unprojector.accumulate(smap, unprojection, masks, self._next_keyframe_id)
                self._next_keyframe_id += 1
                self._hold_budget()
        except Exception as exc:  # the unprojection stage boundary: skip the keyframe
            self.stats.segment_errors[self._unproject.record_failure(exc).key] += 1
            return
        self._unproject.record_success()
        if self._on_stage_time is not None:
            self._on_stage_time("unproject", time.perf_counter() - t1)
        self.stats.keyframes_segmented += 1
        every = self.config.net3d_every_keyframes
        if every and self.stats.keyframes_segmented % every == 0:
            self._refresh_3d_supervised()

    def _refresh_3d_supervised(self, timeout_s: float = -1.0) -> bool:
        """:meth:`refresh_3d` as the supervised "net3d" stage, one refresh at a time; waits
        ``timeout_s`` (-1: as long as it takes) for a refresh already running. Returns whether
        the features were refreshed."""
        if self.net3d is None or not self._net3d_lock.acquire(timeout=timeout_s):
            return False
        try:
            return not isinstance(self._net3d_stage.call(self.refresh_3d), Failure)
        finally:
            self._net3d_lock.release()

    def refresh_3d(self) -> None:
        """Bring the 3D features up to date with the map (new voxels only; no-op without Net3D).

        The network runs on a snapshot outside the lock, so integration and queries go on
        meanwhile; voxels added during the run get zero features until the next refresh.
        """
        if self.net3d is None:
            return
        t0 = time.perf_counter()
        refresh_map_features(self.net3d, self.map, lock=self.lock)
        net3d_s = time.perf_counter() - t0
        self.stats.net3d_runs += 1
        self.stats.net3d_s_total += net3d_s
        if self._on_stage_time is not None:
            self._on_stage_time("net3d", net3d_s)

    def flush(self, timeout_s: float | None = None) -> FlushReport:
        """Wait until every queued keyframe is segmented, then refresh surface and 3D features.

        Waits ``timeout_s`` at most (default ``config.flush_timeout_s``). When the time is over
        the keyframes stay queued, the 3D refresh is skipped, and the report (and a log line)
        say how many were pending. A 3D refresh still running at the deadline goes on in the
        background (one at a time) instead of holding the caller.
        """
        t0 = time.monotonic()
        deadline = t0 + (self.config.flush_timeout_s if timeout_s is None else timeout_s)
        pending = self._wait_for_worker(deadline)
        surface_done = self.lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))
        if surface_done:
            try:
                self._fusion.call(self._update_surface)
            finally:
                self.lock.release()
        wants_3d = self.net3d is not None and self._net3d_stage.enabled
        refreshed = False
        if wants_3d and not pending:
            refreshed = self._run_until(self._refresh_3d_supervised, deadline, "3D refresh")
        report = FlushReport(
            completed=not pending and surface_done and (refreshed or not wants_3d),
            keyframes_pending=pending,
            net3d_refreshed=refreshed,
            waited_s=time.monotonic() - t0,
        )
        if pending:
            _LOG.warning(
                "flush gave up after %.1f s: %d keyframe(s) still queued or in the 2D model",
                report.waited_s, pending,
            )
        return report

    def close(
        self,
        timeout_s: float | None = None,
        *,
        policy: Literal["finish", "abandon"] | None = None,
    ) -> CloseReport:
        """Stop taking frames, deal with queued keyframes by ``policy``, stop the worker.

        ``policy`` (default ``config.close_policy``): "finish" segments the queued keyframes,
        "abandon" drops them (counted) and only waits for the one inside the 2D model. Either
        way close returns within ``timeout_s`` (default ``config.flush_timeout_s``), dropping
        whatever is left then; a worker stuck in the model is left behind (a daemon thread).
        The map stays usable (queries, :meth:`save`). Closing twice returns the first report.
        """
        if self._close_report is not None:
            return self._close_report
        t0 = time.monotonic()
        deadline = t0 + (self.config.flush_timeout_s if timeout_s is None else timeout_s)
        policy = self.config.close_policy if policy is None else policy
        self._closed = True  # add_frame refuses from here on
        segmented_before = self.stats.keyframes_segmented
        abandoned = self._drop_queued() if policy == "abandon" else 0
        if policy == "finish":
            self.flush(timeout_s=max(deadline - time.monotonic(), 0.0))
        else:
            self._wait_for_worker(deadline)
        abandoned += self._drop_queued()  # what time did not allow
        worker_stopped = True
        if self._worker is not None:
            self._stop_worker()
            self._worker.join(timeout=max(deadline - time.monotonic(), 0.0))
            worker_stopped = not self._worker.is_alive()
        if abandoned:
            self.stats.keyframes_abandoned["close"] += abandoned
        report = CloseReport(
            policy=policy,
            completed=worker_stopped and not abandoned,
            keyframes_finished=self.stats.keyframes_segmented - segmented_before,
            keyframes_abandoned=abandoned,
            worker_stopped=worker_stopped,
            duration_s=time.monotonic() - t0,
        )
        log = _LOG.info if report.completed else _LOG.warning
        log(
            "pipeline closed in %.1f s (policy %s): %d keyframe(s) finished, %d abandoned%s",
            report.duration_s, policy, report.keyframes_finished, abandoned,
            "" if worker_stopped else "; the 2D worker is stuck in the model and left behind",
        )
        self._close_report = report
        return report

    def _update_surface(self) -> None:
        self.map.apply_surface_update(self.mapper.update_voxels())

    def _wait_for_worker(self, deadline: float) -> int:
        """Wait until the worker has nothing queued or in hand, at most until ``deadline``
        (time.monotonic()); returns the keyframes still pending then."""
        if self._worker is None:
            return 0
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                done.wait(remaining)
            return int(self._queue.unfinished_tasks)

    def _drop_queued(self) -> int:
        """Take every keyframe out of the queue unsegmented; returns how many."""
        dropped = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return dropped
            self._queue.task_done()
            dropped += item is not None

    def _stop_worker(self) -> None:
        """Queue the worker's stop sign without waiting (the queue is emptied to make room)."""
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:  # a keyframe slipped in after the close began
                self.stats.keyframes_abandoned["close"] += self._drop_queued()

    def _run_until(self, fn: Callable[[], bool], deadline: float, what: str) -> bool:
        """``fn()`` on a daemon thread, waited for until ``deadline``; its result, or False
        if it is still running then (it goes on in the background)."""
        result: list[bool] = []
        thread = threading.Thread(
            target=lambda: result.append(fn()), name=what, daemon=True
        )
        thread.start()
        thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            _LOG.warning("%s still running at the deadline; it finishes in the background", what)
            return False
        return bool(result and result[0])

    def stage_status(self) -> dict[str, StageStatus]:
        """Health of every supervised stage (ok / failing / disabled, counts, last error)."""
        return self.supervisor.status()

    # ------------------------------------------------------------------ memory budget

    def map_memory_allowance_b(self) -> int | None:
        """Bytes the semantic map may hold in memory under ``memory_budget_mb`` now (None
        without a budget): the budget less the process at start, the mapper's geometry (TSDF
        working set, voxel index) and a tenth for transients."""
        if not self.config.memory_budget_mb:
            return None
        budget = self.config.memory_budget_mb * 2**20
        fixed = self._rss_at_start_b + self.mapper.geometry_nbytes + 0.1 * budget
        return max(int(budget - fixed), 0)

    def _hold_budget(self) -> None:
        """Spill what the map holds beyond its allowance (call with the lock held)."""
        allowance = self.map_memory_allowance_b()
        if allowance is None:
            return
        self.map.enforce_budget(allowance)
        if self.map.memory_nbytes > allowance:
            if not self.stats.memory_budget_short:
                _LOG.warning(
                    "memory_budget_mb %.0f cannot be held: the map needs %.1f MiB in memory "
                    "with every block it can spill on disk, %.1f MiB are left for it",
                    self.config.memory_budget_mb, self.map.memory_nbytes / 2**20,
                    allowance / 2**20,
                )
            self.stats.memory_budget_short += 1

    def memory_stats(self) -> dict[str, float | int]:
        """Where the map's bytes are: in memory (map and mapper), on disk, blocks moved."""
        smap = self.map
        out: dict[str, float | int] = {
            "map_mb_in_memory": round(
                (smap.memory_nbytes + self.mapper.geometry_nbytes) / 2**20, 1
            ),
            "map_mb_spilled": round(smap.spilled_nbytes / 2**20, 1),
            "map_blocks_spilled_now": smap.spilled_blocks,
            "map_blocks_evicted": smap.blocks_spilled,
            "map_blocks_reloaded": smap.blocks_reloaded,
            "memory_budget_mb": self.config.memory_budget_mb,
            "memory_budget_short": self.stats.memory_budget_short,
        }
        rss = rss_mib()
        if rss is not None:
            out["rss_mb"] = round(rss, 1)
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save the semantic map (atomically) with the stats of this run in its metadata.

        The surface is brought up to date with everything fused first: between keyframes the
        map's voxels lag the TSDF, and a saved map should hold every integrated frame.
        """
        with self.lock:
            self._fusion.call(self._update_surface)
            self.map.metadata["pipeline_stats"] = self.stats_dict()
            return self.map.save(path)

    def load(self, path: str | Path) -> None:
        """Replace the semantic map by a saved one.

        The TSDF is not part of a saved map: fusion restarts empty, seeded with the saved
        voxels so that their indices (and memberships, features) stay valid as the map grows.
        """
        loaded = SemanticMap.load(path, block_rows=self.config.spill_block_voxels)
        with self.lock:
            if abs(loaded.voxel_size_m - self.map.voxel_size_m) > 1e-9:
                raise InputError(
                    "voxel_size_mismatch",
                    f"map has {loaded.voxel_size_m} m voxels, pipeline {self.map.voxel_size_m} m",
                )
            mapper = Mapper(self.config.mapper)
            mapper.seed_voxels(loaded.coords, loaded.colors)
            # The counters describe the frames this pipeline was given, not the map: a load
            # must not reset them (a node's frame accounting would no longer close).
            mapper.stats = self.mapper.stats
            if self._spill is not None:
                self._spill.close()  # the old map's spilled blocks go with it
                self._spill = SpillStore(self.config.spill_dir or None)
                loaded.attach_spill_store(self._spill)
            self.map, self.mapper = loaded, mapper
            self._hold_budget()
            if self.net3d is not None:  # features of the loaded map, or recompute them all
                dims = {s: f.shape[1] for s, f in self.net3d.features.items()}
                fits = {s: f.shape[1] for s, f in loaded.features_3d.items()} == dims
                self.net3d.features = {
                    s: (loaded.features_3d[s].copy() if fits else np.zeros((0, d), np.float16))
                    for s, d in dims.items()
                }

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        out: dict[str, Any] = {
            "frames_in": s.frames_in,
            "frames_integrated": self.mapper.stats.frames_integrated,
            "keyframes_selected": s.keyframes_selected,
            "keyframes_segmented": s.keyframes_segmented,
            "keyframes_dropped": s.keyframes_dropped,
            "keyframe_queue_depth": self._queue.qsize(),
            "map_voxels": self.map.num_voxels,
            "masks": self.map.mask_bank.num_masks,
            "integrate_ms_mean": 1e3 * s.integrate_s_total / max(s.frames_in, 1),
            "segment_ms_mean": 1e3 * s.segment_s_total / max(s.keyframes_segmented, 1),
            "net3d_runs": s.net3d_runs,
            "net3d_ms_mean": 1e3 * s.net3d_s_total / max(s.net3d_runs, 1),
        }
        out.update({f"frames_skipped_{k}": v for k, v in self.mapper.stats.skipped.items()})
        out.update({f"segment_errors_{k}": v for k, v in s.segment_errors.items()})
        out["keyframes_abandoned"] = sum(s.keyframes_abandoned.values())
        out.update({f"keyframes_abandoned_{k}": v for k, v in s.keyframes_abandoned.items()})
        out.update({f"integrate_errors_{k}": v for k, v in s.integrate_errors.items()})
        gate = self.priority.stats()
        out["fusion_yield_waits"] = gate.waits
        out["fusion_yield_waits_timed_out"] = gate.waits_timed_out
        out["fusion_yield_s_total"] = round(gate.waited_s_total, 3)
        out.update(self.memory_stats())
        out.update(self.supervisor.summary())
        return out
