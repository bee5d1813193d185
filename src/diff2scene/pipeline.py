"""The online pipeline: frames in, a semantic voxel map out, queries answered.

One object drives the core for every front end (ROS node, bag replay, evaluation):

    frame ──► Mapper.integrate ──► KeyframeSelector ──► bounded keyframe queue
                                                         │ (worker thread)
                                                         ▼
                         Segmenter2D.segment ──► MaskUnprojector.accumulate ──► SemanticMap

Mapping never waits for the 2D model: keyframes wait in a bounded queue whose overflow policy
is explicit — ``drop_oldest`` (live robots: the newest view matters most; each drop is counted)
or ``block`` (bag replay: every keyframe is processed, the replay slows down instead).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diff2scene.config import to_dict
from diff2scene.errors import Diff2SceneError, InputError
from diff2scene.mapping.keyframes import KeyframeConfig, KeyframeSelector
from diff2scene.mapping.mapper import Mapper, MapperConfig
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.mapping.unproject import MaskUnprojector, UnprojectConfig
from diff2scene.net3d.inference import Net3D, Net3DConfig, refresh_map_features
from diff2scene.segmentation.base import Segmenter2D
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
    #: Run the 3D network over the map (geometric branch); off = queries use the unprojected
    #: 2D masks alone.
    net3d_enabled: bool = False
    #: The 3D network (its checkpoint comes from ``diff2scene train``).
    net3d: Net3DConfig = field(default_factory=Net3DConfig)
    #: Refresh the 3D features after every n-th segmented keyframe (and on flush); 0 = on
    #: flush only.
    net3d_every_keyframes: int = 10

    def __post_init__(self) -> None:
        if self.keyframe_queue_size < 1:
            raise ValueError("keyframe_queue_size must be >= 1")
        if self.members_per_voxel < 1:
            raise ValueError("members_per_voxel must be >= 1")
        if self.net3d_every_keyframes < 0:
            raise ValueError("net3d_every_keyframes must be >= 0")


@dataclass
class PipelineStats:
    frames_in: int = 0
    keyframes_selected: int = 0
    keyframes_segmented: int = 0
    keyframes_dropped: int = 0
    #: Failures inside the 2D stage by reason (the map is kept, the keyframe is skipped).
    segment_errors: Counter[str] = field(default_factory=Counter)
    segment_s_total: float = 0.0
    integrate_s_total: float = 0.0
    net3d_runs: int = 0
    net3d_s_total: float = 0.0


class Pipeline:
    """Owns the map; thread-safe: frames, queries and saves may come from different threads."""

    def __init__(self, config: PipelineConfig, segmenter: Segmenter2D) -> None:
        self.config = config
        self.segmenter = segmenter
        self.mapper = Mapper(config.mapper)
        self.map = SemanticMap(
            config.mapper.voxel_size_m, members_per_voxel=config.members_per_voxel
        )
        self.map.metadata["pipeline_config"] = to_dict(config)
        self.keyframes = KeyframeSelector(config.keyframes)
        self.unprojector = MaskUnprojector(config.unproject)
        self.stats = PipelineStats()
        #: Guards the map and the mapper: held briefly by integration, unprojection, queries.
        self.lock = threading.RLock()
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=config.keyframe_queue_size)
        self._next_keyframe_id = 0
        self.net3d = Net3D.from_config(config.net3d) if config.net3d_enabled else None
        self._worker: threading.Thread | None = None
        self._closed = False
        if config.threaded:
            self._worker = threading.Thread(target=self._work, name="segmenter2d", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ input

    def add_frame(self, frame: Frame) -> bool:
        """Integrate ``frame``; queue it for the 2D model if it is a keyframe.

        Returns whether the frame was integrated. Never raises for a bad frame (it is counted
        by the mapper); never blocks on the 2D model unless the policy is ``block``.
        """
        if self._closed:
            raise Diff2SceneError("pipeline is closed")
        self.stats.frames_in += 1
        t0 = time.perf_counter()
        with self.lock:
            integrated = self.mapper.integrate(frame)
        self.stats.integrate_s_total += time.perf_counter() - t0
        if not integrated or not self.keyframes.is_keyframe(frame):
            return integrated
        self.stats.keyframes_selected += 1
        if not self.config.threaded:
            self._segment(frame)
            return True
        if self.config.overflow_policy == "block":
            self._queue.put(frame)
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

    # ------------------------------------------------------------------ 2D stage

    def _work(self) -> None:
        while True:
            frame = self._queue.get()
            try:
                if frame is None:
                    return
                self._segment(frame)
            finally:
                self._queue.task_done()

    def _segment(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            masks = self.segmenter.segment(frame)
        except InputError as exc:
            self.stats.segment_errors[exc.reason] += 1
            _LOG.warning("keyframe %d not segmented: %s", frame.index, exc)
            return
        except Exception as exc:  # a model failure must not take the map down with it
            self.stats.segment_errors[type(exc).__name__] += 1
            _LOG.exception("2D model failed on keyframe %d", frame.index)
            return
        self.stats.segment_s_total += time.perf_counter() - t0
        try:
            with self.lock:
                # The keyframe's own view was integrated already; make its voxels addressable.
                self.map.apply_surface_update(self.mapper.update_voxels())
                unprojection = self.unprojector.unproject(
                    masks.masks, frame.depth_m, frame.intrinsics, frame.T_world_camera,
                    self.map.points_m,
                )
                self.unprojector.accumulate(self.map, unprojection, masks, self._next_keyframe_id)
                self._next_keyframe_id += 1
        except Diff2SceneError as exc:  # e.g. masks of the wrong size: skip the keyframe
            self.stats.segment_errors[type(exc).__name__] += 1
            _LOG.warning("keyframe %d not added to the map: %s", frame.index, exc)
            return
        self.stats.keyframes_segmented += 1
        every = self.config.net3d_every_keyframes
        if every and self.stats.keyframes_segmented % every == 0:
            self.refresh_3d()

    def refresh_3d(self) -> None:
        """Bring the 3D features up to date with the map (new voxels only; no-op without Net3D).

        The network runs on a snapshot outside the lock, so integration and queries go on
        meanwhile; voxels added during the run get zero features until the next refresh.
        """
        if self.net3d is None:
            return
        t0 = time.perf_counter()
        refresh_map_features(self.net3d, self.map, lock=self.lock)
        self.stats.net3d_runs += 1
        self.stats.net3d_s_total += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait until every queued keyframe is segmented, then refresh surface and 3D features."""
        if self._worker is not None:
            self._queue.join()
        with self.lock:
            self.map.apply_surface_update(self.mapper.update_voxels())
        self.refresh_3d()

    def close(self) -> None:
        """Finish queued work and stop the worker. The map stays usable."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save the semantic map (atomically) with the stats of this run in its metadata."""
        with self.lock:
            self.map.metadata["pipeline_stats"] = self.stats_dict()
            return self.map.save(path)

    def load(self, path: str | Path) -> None:
        """Replace the semantic map by a saved one.

        The TSDF is not part of a saved map: fusion restarts empty, seeded with the saved
        voxels so that their indices (and memberships, features) stay valid as the map grows.
        """
        loaded = SemanticMap.load(path)
        with self.lock:
            if abs(loaded.voxel_size_m - self.map.voxel_size_m) > 1e-9:
                raise InputError(
                    "voxel_size_mismatch",
                    f"map has {loaded.voxel_size_m} m voxels, pipeline {self.map.voxel_size_m} m",
                )
            mapper = Mapper(self.config.mapper)
            mapper.seed_voxels(loaded.coords, loaded.colors)
            self.map, self.mapper = loaded, mapper
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
        return out
