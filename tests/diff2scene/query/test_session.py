"""QuerySession: concurrent queries, answers during a rebuild, labelling, vocabulary."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

from diff2scene.errors import InputError
from diff2scene.mapping import MaskUnprojector, SemanticMap, SurfaceUpdate, Unprojection
from diff2scene.mapping.snapshot import MapSnapshot
from diff2scene.query.engine import QueryConfig
from diff2scene.query.ensemble import EnsembleConfig
from diff2scene.query.instances import InstanceConfig
from diff2scene.query.labelling import LabellingConfig
from diff2scene.query.session import LockedSnapshotSource, QuerySession
from diff2scene.segmentation.clip import ClipConfig, build_clip
from diff2scene.segmentation.oracle import OracleSegmenter
from diff2scene.segmentation.text import ClipTextEncoder, TextEncoderConfig
from diff2scene.types import MaskSet
from tests.diff2scene.query.toy import OBJECTS, ToyMap, build_toy_map

QUERY = QueryConfig(instances=InstanceConfig(min_voxels=5))
ENSEMBLE = EnsembleConfig(num_prototypes=0)
#: Seen from +x looking towards -x, left is -y (chair_a); from the default +y it is chair_b.
EAST = (5.0, 0.4, 1.0)


@pytest.fixture(scope="module")
def encoder() -> ClipTextEncoder:
    cfg = TextEncoderConfig(clip=ClipConfig.tiny_profile())
    return ClipTextEncoder(build_clip(cfg.clip), cfg)


@pytest.fixture(scope="module")
def oracle(encoder: ClipTextEncoder) -> OracleSegmenter:
    return OracleSegmenter({}, encoder)


@pytest.fixture(scope="module")
def toy(encoder: ClipTextEncoder, oracle: OracleSegmenter) -> ToyMap:
    return build_toy_map(encoder, oracle)


def voxels_of(toy: ToyMap, name: str) -> tuple[int, ...]:
    j = [o[0] for o in OBJECTS].index(name)
    return tuple(np.flatnonzero(toy.voxel_object == j))


class GatedEncoder:
    """The real encoder, held at a gate when the session's background builder calls it."""

    def __init__(self, inner: ClipTextEncoder) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.builder_waiting = threading.Event()

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if threading.current_thread().name == "query-session-build":
            self.builder_waiting.set()
            assert self.gate.wait(timeout=120), "test never opened the gate"
        return self.inner.encode(texts)


def test_concurrent_queries_each_use_their_own_viewpoint(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    session = QuerySession.of_snapshot(
        toy.snapshot(), encoder, oracle, query=QUERY, ensemble=ENSEMBLE
    )
    expected = {None: voxels_of(toy, "chair_b"), EAST: voxels_of(toy, "chair_a")}
    views = [None, EAST] * 6

    def ask(view: tuple[float, float, float] | None) -> tuple[int, ...]:
        answer = session.query("chair left of the table", viewpoint_m=view)
        assert len(answer.result.instances) == 1
        return tuple(answer.result.instances[0].voxel_indices)

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(ask, views))
    assert got == [expected[v] for v in views]
    stats = session.stats()
    assert stats.engines_built == 1 and stats.queries == len(views)
    with pytest.raises(InputError):
        session.query("chair left of the table", viewpoint_m=(1.0, 2.0))


def test_answers_come_from_the_old_version_while_the_new_one_builds(
    toy: ToyMap, encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    old = toy.snapshot()
    # The next map version lost chair_b's memberships (and has no 3D features yet): one chair
    # instead of two.
    ids = toy.member_ids.copy()
    ids[np.array(voxels_of(toy, "chair_b"))] = -1
    new = MapSnapshot.from_arrays(
        voxel_size_m=toy.voxel_size_m, coords=toy.coords, member_ids=ids,
        member_weights=toy.member_weights, bank_embeddings=toy.embeddings,
    )  # fmt: skip
    current = [old]
    gated = GatedEncoder(encoder)
    session = QuerySession(lambda: current[0], gated, oracle, query=QUERY, ensemble=ENSEMBLE)
    first = session.query("chair")
    assert first.freshness.waited_for_build and first.freshness.up_to_date
    assert len(first.result.instances) == 2

    gated.gate.clear()
    current[0] = new
    during = session.query("chair")  # must not wait: the builder is held at the gate
    assert gated.builder_waiting.wait(timeout=60)
    assert session.stats().build_in_progress
    f = during.freshness
    assert not f.waited_for_build and not f.up_to_date
    assert (f.map_version, f.latest_map_version) == (old.version, new.version)
    assert during.snapshot is old and f.map_age_s >= 0.0
    assert len(during.result.instances) == 2

    gated.gate.set()
    assert session.wait_until_current(timeout_s=120)
    after = session.query("chair")
    assert after.freshness.up_to_date and not after.freshness.waited_for_build
    assert after.freshness.map_version == new.version
    assert len(after.result.instances) == 1
    stats = session.stats()
    assert stats.engines_built == 2 and stats.queries_waited == 1
    session.close()


def test_labelling_follows_the_map_and_the_vocabulary(
    encoder: ClipTextEncoder, oracle: OracleSegmenter
) -> None:
    rng = np.random.default_rng(0)
    smap = SemanticMap(0.05, members_per_voxel=4)
    coords = np.unique(rng.integers(0, 30, (300, 3)), axis=0).astype(np.int32)
    smap.apply_surface_update(
        SurfaceUpdate.appending(0.05, coords, np.zeros_like(coords, np.uint8))
    )
    lock = threading.Lock()

    def snapshot() -> MapSnapshot:
        with lock:
            return smap.snapshot()

    def keyframe(kf: int) -> None:
        text = encoder.encode(["a photo of a chair."])
        emb = np.repeat(text, 3, axis=0)
        masks = MaskSet(
            masks=np.zeros((3, 1, 1), np.float32),
            embeddings={"clip": emb, "diffusion": emb @ oracle.projection},
        )
        vox = np.arange(smap.num_voxels, dtype=np.int64)
        with lock:
            MaskUnprojector().accumulate(
                smap, Unprojection(vox, np.full((3, vox.size), 0.9, np.float32), vox), masks, kf
            )

    keyframe(0)
    session = QuerySession(
        snapshot, encoder, oracle, query=QUERY, ensemble=ENSEMBLE,
        labelling=LabellingConfig(classes=("chair", "table")),
    )  # fmt: skip
    first = session.labelling()
    assert first.freshness.waited_for_build
    assert first.labelling.names == ["chair", "table"]
    assert first.labelling.labels.shape == (smap.num_voxels,)
    keyframe(1)
    stale = session.labelling()  # answered at once from the old version
    assert not stale.freshness.up_to_date and stale.snapshot is first.snapshot
    assert session.wait_until_current(timeout_s=120)
    fresh = session.labelling()
    assert fresh.freshness.up_to_date and fresh.snapshot.num_masks == 6
    config = session.set_vocabulary(classes=["chair", "sofa", "lamp"])
    assert config.classes == ("chair", "sofa", "lamp")
    relabelled = session.labelling()
    assert relabelled.labelling.names == ["chair", "sofa", "lamp"]
    assert relabelled.freshness.waited_for_build
    with pytest.raises(InputError):
        session.set_vocabulary()
    session.close()


def test_locked_source_does_not_wait_for_a_busy_lock() -> None:
    smap = SemanticMap(0.05)
    coords = np.arange(30, dtype=np.int32).reshape(10, 3)
    smap.apply_surface_update(
        SurfaceUpdate.appending(0.05, coords, np.zeros_like(coords, np.uint8))
    )
    lock = threading.RLock()
    source = LockedSnapshotSource(lambda: smap, lock)
    first = source()  # the first call may wait; it gets the lock at once here
    assert first.version == smap.version
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with lock:  # a keyframe being merged: the map changes under the lock
            smap.count_views(np.arange(5, dtype=np.int64))
            held.set()
            assert release.wait(timeout=60)

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(timeout=60)
    during = source()  # must not block on the held lock
    assert during is first
    release.set()
    thread.join(timeout=60)
    after = source()
    assert after.version == smap.version > first.version
