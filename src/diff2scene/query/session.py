"""One query session per map: answers from the last ready engine, newer ones built behind.

Every front end (ROS node, replay, demo, benchmarks) asks its questions through a
:class:`QuerySession`. It is given a function returning the map's current
:class:`~diff2scene.mapping.snapshot.MapSnapshot` (cheap: an unchanged map returns the same
snapshot) and owns everything derived from a snapshot — the :class:`QueryEngine`, the
geometric index, the labelling of the current vocabulary.

Why answers never wait for a rebuild: building an engine for a new map version (the membership
matrix, the geometric index) takes from tens of milliseconds to seconds at a million voxels.
A query that finds a newer map version than its engine's asks for a build and is answered by
the engine it has, at once; one background thread builds, at most one build runs at a time,
and when several versions arrive meanwhile only the newest is built. Only the very first query
(no engine at all yet) builds in the caller's thread. Every answer says which map version
answered it, how old that snapshot is and whether the caller waited for a build.

The geometric index follows the map incrementally (:meth:`GeometricIndex.update`): new voxels,
new masks and revised 3D features cost their own rows, and the bank is re-clustered (a full
build) only when it outgrew the last fit.

Per-request state (the viewpoint of left/right) is an argument of :meth:`QuerySession.query`,
never stored on the shared engine, so concurrent queries from several threads are independent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import Diff2SceneError, InputError
from diff2scene.mapping.semantic_map import SemanticMap
from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.query.engine import QueryConfig, QueryEngine, QueryResult
from diff2scene.query.ensemble import Branch, EnsembleConfig, GeometricIndex
from diff2scene.query.labelling import Labelling, LabellingConfig, MaskClassifier
from diff2scene.segmentation.base import TextEncoder
from diff2scene.segmentation.vocabularies import build_vocabulary, get_vocabulary_names

_LOG = logging.getLogger(__name__)

#: Returns the map's current snapshot (e.g. a :class:`LockedSnapshotSource`, or
#: ``lambda: snap`` for a fixed map).
SnapshotSource = Callable[[], MapSnapshot]


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class LockedSnapshotSource:
    """Snapshots of a map guarded by a lock, without making a query wait for that lock.

    The pipeline holds its lock while it fuses a frame or merges a keyframe (tens of
    milliseconds); a query arriving then gets the snapshot taken last time instead of
    waiting (it is at most one mutation old, and the answer says which version it is). Only
    the very first call blocks for the lock. ``get_map`` is called under the lock, so a map
    replaced by a load is picked up.
    """

    def __init__(self, get_map: Callable[[], SemanticMap], lock: _Lock) -> None:
        self._get_map = get_map
        self._lock = lock
        self._last: MapSnapshot | None = None

    def __call__(self) -> MapSnapshot:
        last = self._last
        if not self._lock.acquire(blocking=last is None):
            assert last is not None
            return last
        try:
            snapshot = self._get_map().snapshot()
        finally:
            self._lock.release()
        self._last = snapshot
        return snapshot


@dataclass(frozen=True)
class Freshness:
    """Which map state an answer came from."""

    #: Version of the snapshot that answered.
    map_version: int
    #: Newest version the session had seen when it answered (≥ ``map_version``).
    latest_map_version: int
    #: Seconds since the answering snapshot was taken: the map may have changed any time after.
    map_age_s: float
    #: The caller waited for an engine (or labelling) to be built.
    waited_for_build: bool

    @property
    def up_to_date(self) -> bool:
        return self.map_version == self.latest_map_version


@dataclass(frozen=True)
class SessionAnswer:
    """A query's result with the snapshot it was computed on (for points, colours)."""

    result: QueryResult
    snapshot: MapSnapshot
    freshness: Freshness


@dataclass(frozen=True)
class SessionLabelling:
    """The labelled map with the snapshot it was computed on."""

    labelling: Labelling
    snapshot: MapSnapshot
    freshness: Freshness


@dataclass(frozen=True)
class SessionStats:
    """What the session has done so far."""

    engines_built: int
    geometric_full_builds: int
    geometric_updates: int
    labellings_built: int
    queries: int
    queries_waited: int
    #: Wall time of the last engine build (index included), seconds.
    last_build_s: float
    #: Why the last background build failed ("" if it did not).
    last_build_error: str
    build_in_progress: bool


@dataclass(frozen=True)
class _Ready:
    engine: QueryEngine
    geometric: GeometricIndex | None


class QuerySession:
    """Versioned query engine + labelling over a changing map; thread-safe.

    ``snapshot_source`` is called on every query and labelling (it must be cheap and
    thread-safe, e.g. take the pipeline's lock and return ``SemanticMap.snapshot()``).
    ``background`` False builds in the caller's thread whenever the map changed (tools that
    want every answer from the newest map, e.g. offline evaluation).
    """

    def __init__(
        self,
        snapshot_source: SnapshotSource,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        *,
        query: QueryConfig | None = None,
        ensemble: EnsembleConfig | None = None,
        labelling: LabellingConfig | None = None,
        background: bool = True,
    ) -> None:
        self._source = snapshot_source
        self.encoder = encoder
        self.classifier = classifier
        self.query_config = query or QueryConfig()
        self.ensemble_config = ensemble or EnsembleConfig()
        self._labelling_config = labelling or LabellingConfig()
        self.background = background
        self._lock = threading.Lock()
        #: Serialises builds (first synchronous build vs the background thread).
        self._build_lock = threading.Lock()
        self._ready: _Ready | None = None
        self._latest_version = 0
        self._pending: MapSnapshot | None = None
        self._builder: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._labelling: tuple[int, LabellingConfig, SessionLabellingCache] | None = None
        self._labelling_wanted = False
        self._closed = False
        self._engines_built = 0
        self._geo_full = 0
        self._geo_updates = 0
        self._labellings_built = 0
        self._queries = 0
        self._queries_waited = 0
        self._last_build_s = 0.0
        self._last_error = ""

    @classmethod
    def of_snapshot(
        cls,
        snapshot: MapSnapshot,
        encoder: TextEncoder,
        classifier: MaskClassifier,
        *,
        query: QueryConfig | None = None,
        ensemble: EnsembleConfig | None = None,
        labelling: LabellingConfig | None = None,
    ) -> QuerySession:
        """A session over one fixed snapshot (a saved map, a benchmark's map)."""
        return cls(
            lambda: snapshot, encoder, classifier,
            query=query, ensemble=ensemble, labelling=labelling, background=False,
        )  # fmt: skip

    # ------------------------------------------------------------------ public API

    def query(
        self,
        text: str,
        *,
        score_threshold: float | None = None,
        top_k: int | None = None,
        viewpoint_m: NDArray[np.floating] | Sequence[float] | None = None,
        branch: Branch | None = None,
    ) -> SessionAnswer:
        """Answer ``text`` from the newest ready engine; see the module doc.

        ``viewpoint_m`` (3,) is where left/right are seen from (None: along +y). Raises
        :class:`~diff2scene.errors.InputError` for malformed queries or arguments.
        """
        ready, waited = self._engine()
        view = None if viewpoint_m is None else np.asarray(viewpoint_m, dtype=np.float64)
        result = ready.engine.query(text, score_threshold, top_k, branch=branch, viewpoint_m=view)
        with self._lock:
            self._queries += 1
            self._queries_waited += int(waited)
        return SessionAnswer(result, ready.engine.snapshot, self._freshness(ready, waited))

    def labelling(self) -> SessionLabelling:
        """Every voxel labelled with the current vocabulary, from the newest ready labelling.

        The first call, and the first after :meth:`set_vocabulary`, label in the caller's
        thread (an old labelling would name other classes); later map versions are labelled
        in the background after their engine is built.
        """
        ready, waited = self._engine()
        with self._lock:
            self._labelling_wanted = True
            config = self._labelling_config
            cached = self._labelling
        if cached is not None and cached[1] == config:
            if cached[0] < ready.engine.map_version and self.background:
                with self._lock:
                    self._kick()
            return SessionLabelling(
                cached[2].labelling, cached[2].snapshot, self._freshness_of(cached[2], waited)
            )
        entry = self._label(ready, config)
        return SessionLabelling(entry.labelling, entry.snapshot, self._freshness_of(entry, True))

    @property
    def labelling_config(self) -> LabellingConfig:
        with self._lock:
            return self._labelling_config

    def set_vocabulary(self, *, classes: Sequence[str] = (), name: str = "") -> LabellingConfig:
        """Label with ``classes``, or with the named vocabulary when ``classes`` is empty.

        The names are embedded here, so a bad vocabulary is refused now (with
        :class:`~diff2scene.errors.InputError`), not at the next labelling.
        """
        if not classes and not name:
            raise InputError("empty_vocabulary", "give class names or a vocabulary name")
        with self._lock:
            current = self._labelling_config
        config = replace(
            current, classes=tuple(classes), vocabulary=name or current.vocabulary
        )
        names = list(classes) if classes else get_vocabulary_names(config.vocabulary)
        build_vocabulary(names, self.encoder, seen=config.seen_classes, templates=config.templates)
        with self._lock:
            self._labelling_config = config
        return config

    def engine(self) -> QueryEngine:
        """The newest ready engine (built now if there is none), e.g. for evaluation."""
        return self._engine()[0].engine

    def refresh(self) -> None:
        """Look for a newer map version and start building it (without waiting)."""
        self._engine()

    def wait_until_current(self, timeout_s: float) -> bool:
        """Wait until the newest map version seen has a ready engine; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self.refresh()
        with self._lock:
            while True:
                ready = self._ready
                current = ready is not None and ready.engine.map_version >= self._latest_version
                if current and self._builder is None:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(timeout=left)

    def stats(self) -> SessionStats:
        with self._lock:
            return SessionStats(
                engines_built=self._engines_built,
                geometric_full_builds=self._geo_full,
                geometric_updates=self._geo_updates,
                labellings_built=self._labellings_built,
                queries=self._queries,
                queries_waited=self._queries_waited,
                last_build_s=self._last_build_s,
                last_build_error=self._last_error,
                build_in_progress=self._builder is not None,
            )

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking new builds and wait for the one in progress (at most ``timeout_s``)."""
        with self._lock:
            self._closed = True
            self._pending = None
            builder = self._builder
        if builder is not None:
            builder.join(timeout=timeout_s)

    # ------------------------------------------------------------------ internals

    def _freshness(self, ready: _Ready, waited: bool) -> Freshness:
        snap = ready.engine.snapshot
        with self._lock:
            latest = max(self._latest_version, snap.version)
        return Freshness(snap.version, latest, snap.age_s, waited)

    def _freshness_of(self, entry: SessionLabellingCache, waited: bool) -> Freshness:
        with self._lock:
            latest = max(self._latest_version, entry.snapshot.version)
        return Freshness(entry.snapshot.version, latest, entry.snapshot.age_s, waited)

    def _engine(self) -> tuple[_Ready, bool]:
        """The engine to answer with, and whether the caller waited for it to be built."""
        snapshot = self._source()
        with self._lock:
            self._latest_version = max(self._latest_version, snapshot.version)
            ready = self._ready
            if ready is not None and ready.engine.map_version == snapshot.version:
                return ready, False
            if ready is not None and self.background:
                self._schedule(snapshot)
                return ready, False
        # No engine yet (or synchronous mode): build here, one builder at a time.
        with self._build_lock:
            with self._lock:
                ready = self._ready
            if ready is not None and ready.engine.map_version >= snapshot.version:
                return ready, True
            built = self._build(snapshot, ready)
            self._publish(built)
            return built, True

    def _schedule(self, snapshot: MapSnapshot) -> None:
        """Queue ``snapshot`` for the background builder (caller holds ``_lock``)."""
        if self._closed:
            return
        if self._pending is None or snapshot.version > self._pending.version:
            self._pending = snapshot
        self._kick()

    def _kick(self) -> None:
        """Start the background builder if it is not running (caller holds ``_lock``)."""
        if self._builder is None and not self._closed:
            self._builder = threading.Thread(
                target=self._build_loop, name="query-session-build", daemon=True
            )
            self._builder.start()

    def _labelling_due(self) -> tuple[_Ready, LabellingConfig] | None:
        """The engine and vocabulary to label next, if a wanted labelling is behind (caller
        holds ``_lock``)."""
        ready, cached, config = self._ready, self._labelling, self._labelling_config
        if not self._labelling_wanted or ready is None:
            return None
        if cached is not None and cached[1] == config and cached[0] >= ready.engine.map_version:
            return None
        return ready, config

    def _build_loop(self) -> None:
        """Background thread: build the newest pending version, then label it if wanted."""
        while True:
            with self._lock:
                snapshot, self._pending = self._pending, None
                ready = self._ready
                label = None if snapshot is not None else self._labelling_due()
                if self._closed or (snapshot is None and label is None):
                    self._builder = None
                    self._idle.notify_all()
                    return
            try:
                if snapshot is not None:
                    if ready is None or snapshot.version > ready.engine.map_version:
                        with self._build_lock:
                            with self._lock:
                                ready = self._ready
                            if ready is None or snapshot.version > ready.engine.map_version:
                                self._publish(self._build(snapshot, ready))
                elif label is not None:
                    self._label(*label)
            except (Diff2SceneError, ValueError, MemoryError) as exc:
                # The old engine keeps answering; the next map version tries again.
                version = snapshot.version if snapshot is not None else -1
                _LOG.warning("query session build (map version %d) failed: %s", version, exc)
                with self._lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    if label is not None:
                        self._labelling_wanted = False  # asked again by the next labelling()

    def _build(self, snapshot: MapSnapshot, previous: _Ready | None) -> _Ready:
        t0 = time.perf_counter()
        geometric = self._geometric_for(snapshot, previous)
        engine = QueryEngine.from_snapshot(
            snapshot, self.encoder, self.classifier, self.query_config,
            ensemble=self.ensemble_config, geometric=geometric,
        )  # fmt: skip
        with self._lock:
            self._engines_built += 1
            self._last_build_s = time.perf_counter() - t0
            self._last_error = ""
        return _Ready(engine, geometric)

    def _geometric_for(
        self, snapshot: MapSnapshot, previous: _Ready | None
    ) -> GeometricIndex | None:
        features, bank = snapshot.features_3d, snapshot.bank_embeddings
        if not features or not set(features) & set(bank):
            return None
        cfg = self.ensemble_config
        old = None if previous is None else previous.geometric
        # An update extends the index by the voxels appended since; a snapshot of the voxels
        # in memory only (a map that spilled blocks) numbers its rows differently: rebuild.
        whole = snapshot.voxel_numbers is None and (
            previous is None or previous.engine.snapshot.voxel_numbers is None
        )
        usable = (
            whole
            and old is not None
            and old.spaces == sorted(set(features) & set(bank))
            and old.num_voxels <= snapshot.num_voxels
            and old.num_masks <= snapshot.num_masks
            and not old.needs_refit(snapshot.num_masks, cfg)
        )
        if usable and old is not None:
            index = old.update(features, bank, cfg)
            with self._lock:
                self._geo_updates += 1
            return index
        index = GeometricIndex.build(features, bank, cfg)
        with self._lock:
            self._geo_full += 1
        return index

    def _publish(self, built: _Ready) -> None:
        with self._lock:
            if self._ready is None or built.engine.map_version > self._ready.engine.map_version:
                self._ready = built
            self._idle.notify_all()

    def _label(self, ready: _Ready, config: LabellingConfig) -> SessionLabellingCache:
        labelling = ready.engine.label(config)
        entry = SessionLabellingCache(labelling, ready.engine.snapshot)
        with self._lock:
            self._labellings_built += 1
            current = self._labelling
            newer = current is None or current[1] != config or (
                ready.engine.map_version > current[0]
            )
            if newer and config == self._labelling_config:
                self._labelling = (ready.engine.map_version, config, entry)
        return entry


@dataclass(frozen=True)
class SessionLabellingCache:
    """A labelling and the snapshot it belongs to (the session's cache entry)."""

    labelling: Labelling
    snapshot: MapSnapshot
