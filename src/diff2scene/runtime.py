"""One mapping runtime under every front end: the live node, the bag replay, the demo and the
benchmarks drive this object, and only convert their inputs and outputs.

Between the message-level front ends and the :class:`~diff2scene.pipeline.Pipeline` sits a
layer of behaviour a user must find the same wherever the map is built:

* **Frames in.** Input records (:mod:`diff2scene.io.messages`) go to the one
  :class:`~diff2scene.io.assembler.FrameAssembler`; the posed frames it makes ready wait,
  undecoded, in **one bounded frame queue** whose oldest frame is dropped (and counted as
  ``frame_queue_full``) when the mapper falls behind; **one worker thread** decodes them and
  feeds the pipeline, which runs the 2D model in its own bounded worker. A deterministic
  replay runs the same steps inline, in the caller's thread (``frames="inline"``).
* **Answers out.** Queries and the labelled map come from the
  :class:`~diff2scene.query.session.QuerySession` (the last ready map version while the next is
  built); the runtime adds the verdicts a front end must give the same way (``map_not_ready``
  just after a load, ``empty_map``), the per-point instance ranks of an answer, and the
  labelled arrays of the map.
* **Books and health.** Every camera frame is accounted for (received or lost = waiting +
  skipped under a reason + in the queue + in the mapper + integrated or skipped by it), and the
  health verdict (drops, input loss, failing stages) is decided here, not in each front end.
* **Shutdown** within a budget: the frame worker, the queued keyframes and the query builder
  each get a share, then the map is saved if asked.

No ROS here: the node (``diff2scene_ros.node``) adds subscriptions, timers, services,
parameters and message conversion around it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import ConfigError, Diff2SceneError, InputError
from diff2scene.io.assembler import FrameAssembler, InputConfig, RawFrame
from diff2scene.io.messages import CameraInfoData, ImageData, PoseData
from diff2scene.io.output_layout import UNKNOWN_LABEL
from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.pipeline import CloseReport, Pipeline, PipelineConfig
from diff2scene.query.engine import QueryConfig, QueryResult
from diff2scene.query.ensemble import EnsembleConfig
from diff2scene.query.labelling import LabellingConfig
from diff2scene.query.session import Freshness, LockedSnapshotSource, QuerySession
from diff2scene.segmentation.base import Segmenter2D, TextEncoder
from diff2scene.segmentation.factory import SegmenterConfig
from diff2scene.supervise import Failure

#: Bounds of a vocabulary set at run time (any DDS participant may call the node's service).
MAX_VOCABULARY_CLASSES = 1000
MAX_CLASS_NAME_CHARS = 100


def _default_segmenter() -> SegmenterConfig:
    return SegmenterConfig(kind="diffusion", profile="odise_sd15")


@dataclass
class RuntimeConfig:
    """What the node and the replay share: one set of defaults, one nesting. The node adds
    its ROS extras (QoS, transports, publish periods, map directory) around it, the replay
    its bag extras (topics, mode, evaluation, pictures)."""

    #: The mapping pipeline: fusion, keyframes, the 2D model's queue, the 3D branch.
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: How messages become frames: pose source, sync, waits (live and replay alike).
    input: InputConfig = field(default_factory=InputConfig)
    #: The 2D model: "diffusion" (a model profile; "odise_sd15" needs the real weights, "tiny"
    #: runs anywhere with random weights) or "oracle" (ground-truth masks of a synthetic scene
    #: or simulator, degraded in known ways, with the synthetic text space).
    segmenter: SegmenterConfig = field(default_factory=_default_segmenter)
    #: Synthetic scene directory (``diff2scene synth`` output with scene.json) whose instance
    #: tables the oracle segmenter reads; a replay defaults to the bag's own scene.
    scene_dir: str = ""
    #: Vocabulary the labelled map is labelled with.
    labelling: LabellingConfig = field(default_factory=LabellingConfig)
    #: Background, thresholds and limits of text queries.
    query: QueryConfig = field(default_factory=QueryConfig)
    #: How the 2D (salient) and 3D (geometric) branches are combined.
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    #: Frames (posed, not yet decoded) waiting for the mapper at most; the oldest is dropped
    #: (and counted as ``frame_queue_full``) when the mapper falls behind. Room for the burst
    #: that a late pose releases at once.
    frame_queue_size: int = 16
    #: Input loss (stamp gaps over colour images published) above which health warns.
    warn_input_loss_ratio: float = 0.05
    #: Shutdown takes at most this long, in seconds: queued keyframes are finished (or
    #: abandoned, see ``shutdown_policy``) within about half of it, then the map is saved.
    shutdown_timeout_s: float = 10.0
    #: At shutdown: "finish" the queued keyframes while time allows, or "abandon" them.
    shutdown_policy: Literal["finish", "abandon"] = "finish"

    def __post_init__(self) -> None:
        if self.frame_queue_size < 1:
            raise ConfigError(f"frame_queue_size must be >= 1, got {self.frame_queue_size}")
        if not self.shutdown_timeout_s > 0:
            raise ConfigError(f"shutdown_timeout_s must be > 0, got {self.shutdown_timeout_s}")
        if not 0 <= self.warn_input_loss_ratio <= 1:
            raise ConfigError("warn_input_loss_ratio must be in [0, 1]")


def build_models(
    config: RuntimeConfig, *, bag: Path | None = None
) -> tuple[Segmenter2D, TextEncoder]:
    """The configured 2D model and the text encoder of its embedding space.

    The oracle reads the ground truth of ``scene_dir``, else of ``bag``'s scene (a replay).
    """
    from diff2scene.segmentation.factory import build_segmenter

    seg = config.segmenter
    if seg.kind == "diffusion":
        return build_segmenter(seg)
    scene = Path(config.scene_dir).expanduser() if config.scene_dir else bag
    if scene is None:
        raise ConfigError("segmenter.kind oracle needs scene_dir (a `diff2scene synth` scene)")
    return build_segmenter(seg, bag=scene)


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class LabelledCloud:
    """The map as arrays: voxel centres, colours by label, labels and their confidence."""

    points_m: NDArray[np.float32]  # (N, 3)
    rgb: NDArray[np.uint8]  # (N, 3): the label's palette colour, the fused colour if unknown
    labels: NDArray[np.uint32]  # (N,) vocabulary index, UNKNOWN_LABEL without evidence
    scores: NDArray[np.float32]  # (N,) confidence of the label


@dataclass(frozen=True)
class QueryAnswer:
    """A text query's answer: the matching points with their instance ranks, and the result."""

    result: QueryResult
    snapshot: MapSnapshot
    freshness: Freshness
    points_m: NDArray[np.float32]  # (M, 3) voxels above the threshold
    rgb: NDArray[np.uint8]  # (M, 3) their fused colours
    #: (M,) 1-based rank of the returned instance a point belongs to, 0 = none.
    rank_labels: NDArray[np.uint32]
    scores: NDArray[np.float32]  # (M,)

    def summary(self) -> str:
        """One line for a service response or a log."""
        result, fresh = self.result, self.freshness
        return (
            f"{self.points_m.shape[0]} points, {len(result.instances)} instances of "
            f"'{result.parsed.target}' in {result.timings_ms.get('total', 0.0):.0f} ms; "
            f"map version {fresh.map_version} (newest {fresh.latest_map_version}), "
            f"{fresh.map_age_s:.1f} s old"
            + (f"; {self.snapshot.voxels_not_searched} voxels spilled to disk (memory budget) "
               "were not searched" if self.snapshot.voxels_not_searched else "")
        )


@dataclass(frozen=True)
class Health:
    """The runtime's verdict: "ok", "warn" (frames lost or dropped) or "error" (a failing
    stage, or a problem a front end adds, such as an incompatible QoS)."""

    level: Literal["ok", "warn", "error"]
    problems: tuple[str, ...]

    def summary(self, stats: dict[str, Any]) -> str:
        head = f"{stats.get('map_voxels', 0)} voxels, {stats.get('frames_integrated', 0)} frames"
        return head + ("; " + "; ".join(self.problems) if self.problems else "")


@dataclass(frozen=True)
class ShutdownReport:
    close: CloseReport
    #: Where the map was saved, if a save was asked for and succeeded.
    saved: Path | None
    #: Why the save failed, if it did.
    save_error: str
    #: The frame worker ended within its share of the budget.
    frame_worker_stopped: bool
    duration_s: float


# --------------------------------------------------------------------------- the runtime


class MappingRuntime:
    """Assembler → frame queue → worker → pipeline, and the query session over its map.

    ``frames``: "queue" (live, and a paced replay) decodes and maps in the runtime's worker
    thread; "inline" does it in the thread that feeds the records (a deterministic replay).
    ``clock_ns`` is the assembler's clock for pose waits (a wall clock live; None in a replay:
    camera time). ``background_queries`` False builds the query engine in the asking thread
    whenever the map changed (a replay asks once the map is final).
    """

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        segmenter: Segmenter2D,
        text_encoder: TextEncoder,
        frames: Literal["queue", "inline"] = "queue",
        clock_ns: Callable[[], int] | None = None,
        expect_instances: bool | None = None,
        background_queries: bool = True,
        on_stage_time: Callable[[str, float], None] | None = None,
    ) -> None:
        self.config = config
        self.segmenter = segmenter
        self.text_encoder = text_encoder
        self._on_stage_time = on_stage_time
        self.pipeline = Pipeline(config.pipeline, segmenter, on_stage_time=on_stage_time)
        #: Queries and labelling, from the last ready map version while the next is built.
        self.session = QuerySession(
            LockedSnapshotSource(lambda: self.pipeline.map, self.pipeline.lock),
            text_encoder, segmenter, query=config.query, ensemble=config.ensemble,
            labelling=config.labelling, background=background_queries,
        )  # fmt: skip
        if expect_instances is None:
            expect_instances = config.segmenter.kind == "oracle"
        self.assembler = FrameAssembler(config.input, expect_instances=expect_instances,
                                        clock_ns=clock_ns)  # fmt: skip
        self._assemble_stage = self.pipeline.supervisor.stage("frame_assembly")
        self._inline = frames == "inline"
        self._lock = threading.Lock()  # guards the frame queue and the worker's state
        self._frames: deque[RawFrame] = deque()
        self._changed = threading.Condition(self._lock)
        self._busy = False  # the worker holds a frame
        self._stop = False
        self._rate_since: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self._worker: threading.Thread | None = None
        if not self._inline:
            self._worker = threading.Thread(target=self._work, name="diff2scene_frames",
                                            daemon=True)  # fmt: skip
            self._worker.start()

    # ------------------------------------------------------------------ input

    def add_color(self, image: ImageData) -> None:
        self.submit(self.assembler.add_color(image))

    def add_depth(self, image: ImageData) -> None:
        self.submit(self.assembler.add_depth(image))

    def add_instances(self, image: ImageData) -> None:
        self.submit(self.assembler.add_instances(image))

    def add_camera_info(self, info: CameraInfoData) -> None:
        self.submit(self.assembler.add_camera_info(info))

    def add_pose(self, pose: PoseData) -> None:
        self.submit(self.assembler.add_pose(pose))

    def add_transforms(self, transforms: Iterable[PoseData], *, static: bool = False) -> None:
        self.submit(self.assembler.add_transforms(transforms, static=static))

    def reject(self, reason: str) -> None:
        """A message the front end could not read, counted under ``rejected_<reason>``."""
        self.assembler.reject(reason)

    def expire(self) -> None:
        """Resolve frames whose wait for a pose is over (live: call it periodically)."""
        self.submit(self.assembler.expire())

    def end_of_stream(self) -> None:
        """No more input: pair and resolve every frame still waiting."""
        self.submit(self.assembler.flush())

    def submit(self, raws: Iterable[RawFrame]) -> None:
        """Frames the assembler made ready: mapped now (inline) or queued for the worker,
        the oldest dropped when the queue is full."""
        if self._inline:
            for raw in raws:
                self._map(raw)
            return
        with self._lock:
            added = False
            for raw in raws:
                if len(self._frames) >= self.config.frame_queue_size:
                    self.assembler.skip_frame(self._frames.popleft(), "frame_queue_full",
                                              "mapper slower than the camera")  # fmt: skip
                self._frames.append(raw)
                added = True
            if added:
                self._changed.notify_all()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued frame is mapped; False if ``timeout_s`` ran out first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while (self._frames or self._busy) and not self._stop:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(0.5 if remaining is None else min(remaining, 0.5))
            return not self._frames

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._frames:
                    self._changed.wait(timeout=0.5)
                if self._stop:
                    return
                raw = self._frames.popleft()
                self._busy = True
            try:
                self._map(raw)
            finally:
                with self._lock:
                    self._busy = False
                    self._changed.notify_all()

    def _map(self, raw: RawFrame) -> None:
        """Decode ``raw`` (here, never in a front end's callback) and map it."""
        t0 = time.perf_counter()
        frame = self._assemble_stage.call(self.assembler.finish, raw)
        if self._on_stage_time is not None:
            self._on_stage_time("decode", time.perf_counter() - t0)
        if isinstance(frame, Failure):
            self.assembler.skip_frame(raw, f"assembly_{frame.key}", str(frame.error))
            return
        if frame is None:
            return
        # a pipeline closed during shutdown refuses it: the frame stays counted as in the mapper
        with contextlib.suppress(Diff2SceneError):
            self.pipeline.add_frame(frame)

    # ------------------------------------------------------------------ answers

    @property
    def map_frame(self) -> str:
        """The fixed frame of the map and of every output."""
        return self.assembler.map_frame

    def latest_camera_position(self) -> NDArray[np.float64] | None:
        """(3,) position of the newest frame's camera: where left/right are seen from."""
        T = self.assembler.latest_camera_pose()
        return None if T is None else T[:3, 3]

    def priority(self) -> AbstractContextManager[Any]:
        """Held around a query's whole answer (message building included) so that fusion
        waits its turn, boundedly, instead of holding the interpreter lock through it."""
        return self.pipeline.priority.priority()

    def query(
        self,
        text: str,
        *,
        score_threshold: float | None = None,
        top_k: int | None = None,
        viewpoint_m: NDArray[np.floating] | None = None,
    ) -> QueryAnswer:
        """Answer ``text`` from the newest ready map version (viewpoint: the newest camera).

        Raises :class:`InputError` for a query the grammar or limits refuse, ``map_not_ready``
        while a loaded map's engine is being built, ``empty_map`` before anything is mapped.
        """
        answer = self.session.query(
            text, score_threshold=score_threshold, top_k=top_k,
            viewpoint_m=self.latest_camera_position() if viewpoint_m is None else viewpoint_m,
        )  # fmt: skip
        snapshot, result, fresh = answer.snapshot, answer.result, answer.freshness
        if snapshot.num_voxels == 0:
            if fresh.latest_map_version > fresh.map_version:
                raise InputError("map_not_ready",
                                 f"map version {fresh.latest_map_version} is being prepared "
                                 "for queries; ask again shortly")  # fmt: skip
            raise InputError("empty_map", "nothing mapped yet")
        matched = result.matched
        ranks = np.zeros(snapshot.num_voxels, np.uint32)
        # the best-ranked instance wins a point that several instances share
        for rank, instance in reversed(list(enumerate(result.instances, start=1))):
            ranks[instance.voxel_indices] = rank
        return QueryAnswer(
            result=result, snapshot=snapshot, freshness=fresh,
            points_m=np.asarray(snapshot.points_m[matched], np.float32),
            rgb=np.asarray(snapshot.colors, np.uint8)[matched],
            rank_labels=ranks[matched],
            scores=np.asarray(result.scores[matched], np.float32),
        )  # fmt: skip

    def labelled_cloud(self, *, max_points: int | None = None) -> LabelledCloud:
        """Every voxel with its label (evenly subsampled to ``max_points`` when given).

        Labels index the vocabulary; voxels with too little evidence get
        :data:`~diff2scene.io.output_layout.UNKNOWN_LABEL` and keep their fused colour.
        """
        from diff2scene.mapping.render import label_palette

        answer = self.session.labelling()
        snapshot, labelling = answer.snapshot, answer.labelling
        keep: slice | NDArray[np.int64] = slice(None)
        n = snapshot.num_voxels
        if max_points is not None and n > max_points:
            keep = np.linspace(0, n - 1, max_points).astype(np.int64)
        known = labelling.labels >= 0
        labels = np.full(n, UNKNOWN_LABEL, np.uint32)
        labels[known] = labelling.labels[known]
        colors = np.array(snapshot.colors, dtype=np.uint8)
        if np.any(known):
            colors[known] = label_palette(len(labelling.names))[labelling.labels[known]]
        return LabelledCloud(
            points_m=np.asarray(snapshot.points_m, np.float32)[keep], rgb=colors[keep],
            labels=labels[keep], scores=labelling.confidence.astype(np.float32)[keep],
        )  # fmt: skip

    def set_vocabulary(self, *, classes: list[str], name: str = "") -> LabellingConfig:
        """Label with ``classes`` (or the named vocabulary when empty); validated first,
        within bounds, because the caller may be any participant of a DDS domain."""
        if len(classes) > MAX_VOCABULARY_CLASSES:
            raise InputError("vocabulary_too_large",
                             f"{len(classes)} classes; at most {MAX_VOCABULARY_CLASSES}")
        long_names = [c[:20] + "…" for c in classes if len(c) > MAX_CLASS_NAME_CHARS]
        if long_names or len(name) > MAX_CLASS_NAME_CHARS:
            raise InputError("class_name_too_long",
                             f"names are at most {MAX_CLASS_NAME_CHARS} characters: "
                             f"{long_names or [name[:20]]}")  # fmt: skip
        return self.session.set_vocabulary(classes=classes, name=name)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        return self.pipeline.save(path)

    def load(self, path: str | Path) -> int:
        """Replace the map by a saved one; returns its voxel count. The loaded map's query
        engine starts building now rather than at the first query, which would otherwise be
        answered from the map that was replaced."""
        self.pipeline.load(path)
        self.session.refresh()
        return self.pipeline.map.num_voxels

    # ------------------------------------------------------------------ books and health

    def diagnostics(self) -> dict[str, Any]:
        """Counters and rates: messages in, frames mapped, every skip, drop and gap by reason,
        how queries were served, and ``frames_unaccounted`` (0 when the books close)."""
        now = time.monotonic()
        stats: dict[str, Any] = dict(self.assembler.counters())
        with self._lock:
            stats["frame_queue_depth"] = len(self._frames)
        stats.update(self.pipeline.stats_dict())
        # a planner-facing promise is that no query waits for an index build
        stats.update({f"session_{k}": v for k, v in asdict(self.session.stats()).items()})
        rated = {k: int(stats.get(k, 0)) for k in ("color_msgs", "depth_msgs",
                                                   "frames_assembled", "frames_integrated")}
        with self._lock:
            since, previous = self._rate_since
            self._rate_since = (now, rated)
        if now > since:
            for key, value in rated.items():
                stats[f"{key}_per_s"] = (value - previous.get(key, 0)) / (now - since)
        stats["frames_unaccounted"] = frames_unaccounted(stats)
        stats["frames_in_mapper"] = frames_in_mapper(stats)
        return stats

    def health(self, stats: dict[str, Any], *, errors: Iterable[str] = ()) -> Health:
        """The verdict on ``stats`` (from :meth:`diagnostics`), with the front end's own
        ``errors`` (e.g. an incompatible QoS) added."""
        level: Literal["ok", "warn", "error"] = "ok"
        problems: list[str] = []
        dropped = int(stats.get("skipped_frame_queue_full", 0)) + int(
            stats.get("keyframes_dropped", 0))
        if dropped:
            level = "warn"
            problems.append(f"{dropped} frames/keyframes dropped")
        loss = float(stats.get("input_loss_ratio", 0.0))
        if loss > self.config.warn_input_loss_ratio:
            level = "warn"
            problems.append(f"{100 * loss:.1f} % of camera frames lost before arrival "
                            f"({stats.get('input_gaps', 0)} stamp gaps; try input_qos: "
                            "reliable)")  # fmt: skip
        short = int(stats.get("memory_budget_short", 0))
        if short:
            level = "warn"
            problems.append(f"memory budget not held after {short} keyframes: what must stay "
                            "in memory outgrew memory_budget_mb")  # fmt: skip
        for error in errors:
            level = "error"
            problems.append(error)
        for name, st in self.pipeline.stage_status().items():
            if st.state != "ok":
                level = "error"
                problems.append(f"stage {name} {st.state}: {st.last_error}")
        return Health(level, tuple(problems))

    # ------------------------------------------------------------------ the end

    def finish(self) -> CloseReport:
        """End of a replay: every queued frame mapped, every queued keyframe segmented
        (within the pipeline's ``flush_timeout_s``), the workers stopped."""
        self.end_of_stream()
        self.drain()
        self._stop_worker(timeout_s=None)
        return self.pipeline.close()

    def shutdown(self, *, save_to: Path | None = None) -> ShutdownReport:
        """Stop within ``shutdown_timeout_s``: about a fifth of it for the frame worker, half
        for the queued keyframes (finished or abandoned by ``shutdown_policy``), a tenth for
        the query builder, the rest for saving the map to ``save_to`` (atomically)."""
        budget_s = self.config.shutdown_timeout_s
        start = time.monotonic()
        stopped = self._stop_worker(timeout_s=budget_s * 0.2)
        close = self.pipeline.close(timeout_s=budget_s * 0.5,
                                    policy=self.config.shutdown_policy)  # fmt: skip
        self.session.close(timeout_s=budget_s * 0.1)
        saved: Path | None = None
        error = ""
        if save_to is not None:
            try:
                saved = self.pipeline.save(save_to)
            except (Diff2SceneError, OSError) as exc:
                error = str(exc)
        return ShutdownReport(close=close, saved=saved, save_error=error,
                              frame_worker_stopped=stopped,
                              duration_s=time.monotonic() - start)  # fmt: skip

    def _stop_worker(self, *, timeout_s: float | None) -> bool:
        with self._lock:
            self._stop = True
            self._changed.notify_all()
        if self._worker is None:
            return True
        self._worker.join(timeout=timeout_s)
        return not self._worker.is_alive()


def frames_unaccounted(stats: dict[str, Any]) -> int:
    """Colour images received or estimated lost that no counter explains: each is a gap,
    skipped under a reason, waiting (for a partner, a pose, or the mapper), or assembled into
    a frame — and an assembled frame is integrated, skipped by the mapper, or in it now
    (``frames_in_mapper``). Counters are read one after another while frames move, so a live
    reading can be off by the frames in transit; at rest it is exact."""
    published = int(stats.get("color_msgs", 0)) + int(stats.get("input_gaps", 0))
    explained = (int(stats.get("frames_assembled", 0))
                 + int(stats.get("frames_skipped_input", 0))
                 + int(stats.get("input_gaps", 0))
                 + int(stats.get("frames_waiting", 0))
                 + int(stats.get("frame_queue_depth", 0)))
    return published - explained


def frames_in_mapper(stats: dict[str, Any]) -> int:
    """Frames handed to the pipeline and not yet integrated or skipped by it."""
    done = int(stats.get("frames_integrated", 0)) + sum(
        int(v) for k, v in stats.items()
        if (k.startswith("frames_skipped_") and k != "frames_skipped_input")
        or k.startswith("integrate_errors_"))
    return int(stats.get("frames_assembled", 0)) - done


def paced(raws: Iterable[RawFrame], rate: float, lag_s: list[float]) -> Iterator[RawFrame]:
    """``raws`` released at ``rate`` times the pace of their stamps (a replay as the camera
    streamed it). ``lag_s[0]`` keeps the furthest the source fell behind that pace, seconds:
    a reader slower than the pace no longer reproduces the stream's rate."""
    start_wall = first_ns = None
    for raw in raws:
        if start_wall is None or first_ns is None:
            start_wall, first_ns = time.monotonic(), raw.stamp_ns
        delay = start_wall + (raw.stamp_ns - first_ns) / 1e9 / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lag_s[0] = max(lag_s[0], -delay)
        yield raw
