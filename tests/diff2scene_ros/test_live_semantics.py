"""Live answers scored against ground truth, across real processes and real DDS.

A player process publishes a synthetic room's bag at the recorded rate; the node runs in its
own process with the oracle segmenter (ground-truth instance images of the bag, undegraded:
see ``ORACLE_EXACT``) and the SYNTHETIC text space (seeded word vectors, not CLIP); this test
process is the client: it asks ``~/text_query`` through
:class:`~diff2scene_ros.client.QueryClient` and checks each answer against the scene's
ground truth (``scene.json``):

- three classes of the room → the best instance lies within 0.3 m of the true object's centre;
- "<colour> <class>" for two same-class objects of different colours → each query finds its
  own object, not the other;
- "the <A> on the <B>" where only one of several A stands on a B → that one;
- an object no room contains → no instance;
- ``~/save_map``, a new node process on the same ``map_dir``, ``~/load_map`` → the same answers.

It also subscribes to ``/diff2scene/detections`` and checks that the ``Detection3DArray`` of a
query carries the boxes (centre, size, label, score) of the ``TextQuery`` response.

The queries are chosen from the ground truth of the first candidate seed whose room offers
them (a general rule, not a fixture's instance ids). The 3D branch is on, as a robot with a
trained network runs it: a narrow MinkUNet is distilled on the room first (60 epochs, ~1 min
here; held-out mask IoU ~0.24), the node loads its checkpoint, refreshes the 3D features every
two keyframes, and answers from the ensemble of both branches; the test checks that the 3D
network ran and that the restarted node answers the same from the saved features.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")
pytest.importorskip("vision_msgs", reason="vision_msgs is not built: run `make setup`")

from diff2scene.query.instances import Instance
from diff2scene.query.relations import RelationConfig, relation_factor
from diff2scene.synth.classes import CLASSES
from diff2scene.synth.dataset import SynthConfig, synthesize
from diff2scene.synth.groundtruth import GroundTruth, InstanceInfo
from diff2scene.synth.render import RenderConfig
from tests.support.ros import REPO, DiagnosticsObserver, call_service, child_env, wait_for

pytestmark = pytest.mark.ros

FRAMES, WIDTH, HEIGHT, RATE_HZ = 60, 160, 120, 10.0
VOXEL_M = 0.05
#: "A on B" between reconstructed boxes: each face may move by a voxel layer (as the demo).
CONTACT_M = 3 * VOXEL_M
NEAR_M = 0.3
CANDIDATE_SEEDS = (15, 3, 7, 11, 21, 2)
STRUCTURE = {"wall", "floor", "ceiling"}
ABSENT = "grand piano"
#: A node name of this run's own: other sessions on the machine may share the random domain.
NODE = f"/diff2scene_live_{os.getpid()}"
#: The oracle undegraded: this test checks the live path end to end (answers against ground
#: truth, live = saved = restarted), and at 60 frames of 160x120 the default noise leaves
#: some single objects unmapped (a trash can with 0 points, a bookshelf without an
#: instance); recognition under that noise is what the quality benchmark measures.
ORACLE_EXACT = {"min_area_px": 1, "boundary_px": 0, "edge_softness_px": 0.0,
                 "miss_prob": 0.0, "merge_prob": 0.0, "spurious_prob": 0.0,
                 "confusion_prob": 0.0, "embedding_noise": 0.0}
NODE_PARAMS = (
    "segmenter.kind:=oracle",
    *(f"segmenter.oracle.{k}:={v}" for k, v in ORACLE_EXACT.items()),
    f"pipeline.mapper.voxel_size_m:={VOXEL_M}",
    f"query.relations.contact_m:={CONTACT_M}",
    "diagnostics_period_s:=0.5",
)


def _centre(inst: InstanceInfo) -> np.ndarray:
    return (np.asarray(inst.bbox_min_m) + np.asarray(inst.bbox_max_m)) / 2


def _box(inst: InstanceInfo) -> Instance:
    lo = np.asarray(inst.bbox_min_m, np.float32)
    hi = np.asarray(inst.bbox_max_m, np.float32)
    return Instance(inst.class_name, 1.0, ((lo + hi) / 2).astype(np.float32), lo, hi,
                    np.zeros(0, np.int64))


@dataclass(frozen=True)
class Check:
    """A query and where its best answer must be: near ``right``, nearer it than ``wrong``."""

    kind: str
    text: str
    right: tuple[np.ndarray, ...] = ()
    wrong: tuple[np.ndarray, ...] = ()


def plan_checks(gt: GroundTruth) -> list[Check] | None:
    """The room's class, attribute, relation and absent-object checks, or None if it lacks one.

    Classes: objects alone of their class (an unambiguous true centre) and at least 20 cm
    across, smallest box first (a compact object has one centre; a large one may be seen in
    parts). Attribute: a class with two instances of two different colours, each colour once.
    Relation: a class with several instances of which exactly one stands on an instance of
    another class (the engine's "on" rule applied to the true boxes).
    """
    objects = [i for i in gt.instances if i.class_name not in STRUCTURE]
    by_class: dict[str, list[InstanceInfo]] = {}
    for inst in objects:
        by_class.setdefault(inst.class_name, []).append(inst)
    checks: list[Check] = []

    def volume(inst: InstanceInfo) -> float:
        return float(np.prod(np.asarray(inst.bbox_max_m) - np.asarray(inst.bbox_min_m)))

    single = [v[0] for v in by_class.values() if len(v) == 1 and max(
        np.asarray(v[0].bbox_max_m) - np.asarray(v[0].bbox_min_m)) >= 0.2]
    single.sort(key=volume)
    if len(single) < 3:
        return None
    checks += [Check("class", i.class_name, (_centre(i),)) for i in single[:3]]

    attribute = None
    for name in sorted(by_class):
        colours: dict[str, list[InstanceInfo]] = {}
        for inst in by_class[name]:
            colours.setdefault(inst.colour_name, []).append(inst)
        once = sorted(c for c, v in colours.items() if len(v) == 1)
        if len(once) >= 2:
            a, b = colours[once[0]][0], colours[once[1]][0]
            attribute = [
                Check("attribute", f"{a.colour_name} {name}", (_centre(a),), (_centre(b),)),
                Check("attribute", f"{b.colour_name} {name}", (_centre(b),), (_centre(a),)),
            ]
            break
    if attribute is None:
        return None
    checks += attribute

    on_surface = {c.name for c in CLASSES if c.placement == "on_surface"}
    relations = RelationConfig(contact_m=CONTACT_M)
    relation = None
    for target in sorted(n for n in by_class if n in on_surface and len(by_class[n]) >= 2):
        for anchor in sorted(n for n in by_class if n != target):
            on = [t for t in by_class[target] if any(
                relation_factor("on", _box(t), _box(o), relations) > 0 for o in by_class[anchor])]
            if len(on) == 1:
                others = tuple(_centre(t) for t in by_class[target] if t is not on[0])
                relation = Check("relation", f"the {target} on the {anchor}", (_centre(on[0]),),
                                 others)
                break
        if relation is not None:
            break
    if relation is None:
        return None
    checks.append(relation)
    assert ABSENT not in by_class
    checks.append(Check("absent", ABSENT))
    return checks


@dataclass(frozen=True)
class LiveScene:
    directory: Path
    checks: list[Check]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> LiveScene:
    config = SynthConfig(render=RenderConfig(width=WIDTH, height=HEIGHT, n_frames=FRAMES,
                                             rate_hz=RATE_HZ))
    root = tmp_path_factory.mktemp("live_semantics")
    for seed in CANDIDATE_SEEDS:
        result = synthesize(root / f"seed_{seed}", seed, config)
        checks = plan_checks(result.groundtruth)
        if checks is not None:
            return LiveScene(result.out_dir, checks)
    pytest.fail(f"none of the seeds {CANDIDATE_SEEDS} has a room offering every check")


# ---------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def checkpoint(scene: LiveScene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow MinkUNet distilled on the room's bag (the bench's settings, fewer epochs)."""
    from diff2scene.mapping.mapper import MapperConfig
    from diff2scene.net3d.model import MinkUNetConfig
    from diff2scene.net3d.train import TrainConfig, train
    from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
    from diff2scene.segmentation.oracle import OracleConfig

    root = tmp_path_factory.mktemp("live_semantics_net3d")
    segmenter_cfg = SegmenterConfig(kind="oracle", text_space="synthetic",
                                    oracle=OracleConfig.exact())
    segmenter, _ = build_segmenter(segmenter_cfg, bag=scene.directory / "bag")
    epochs = 60
    result = train(
        TrainConfig(
            scenes=[scene.directory], out_dir=root, cache_dir=root / "cache",
            model=MinkUNetConfig.narrow(segmenter.embedding_dims), max_views_per_step=8,
            epochs=epochs, batch_size=1, lr=1e-2, mapper=MapperConfig(voxel_size_m=VOXEL_M),
            checkpoint_every_epochs=epochs, holdout_every=4, segmenter=segmenter_cfg,
        ),
        progress=False,
    )  # fmt: skip
    return result.checkpoint


@contextmanager
def node_process(env: dict[str, str], scene_dir: Path, map_dir: Path, checkpoint: Path,
                 log: Path) -> Iterator[subprocess.Popen[Any]]:
    """The real node, ``python -m diff2scene_ros.node``, in its own process; stopped with
    SIGINT (its clean shutdown) and killed only if that does not end it."""
    args = [sys.executable, "-m", "diff2scene_ros.node", "--ros-args",
            "-p", f"scene_dir:={scene_dir}", "-p", f"map_dir:={map_dir}",
            "-p", f"pipeline.net3d.checkpoint:={checkpoint}",
            "-p", "pipeline.net3d_every_keyframes:=2",
            "-r", f"__node:={NODE[1:]}"]
    for p in NODE_PARAMS:
        args += ["-p", p]
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def play(bag: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The bag published at its recorded rate by a player process (``diff2scene play``)."""
    return subprocess.run(
        [sys.executable, "-m", "diff2scene.cli", "play", str(bag),
         "--wait-for-subscribers-s", "120"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


class Observer(DiagnosticsObserver):
    """This process's view of the node's topics: its diagnostics, its detections, and clients
    of ``~/save_map`` / ``~/load_map``."""

    def __init__(self, domain_id: int) -> None:
        from diff2scene_interfaces.srv import LoadMap, SaveMap
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection3DArray

        super().__init__(domain_id, name="live_semantics_observer", node_name=NODE)
        self._detections_lock = threading.Lock()
        self.detections: list[Any] = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(Detection3DArray, f"{NODE}/detections",
                                      self._on_detections, latched)
        self.save_client = self.node.create_client(SaveMap, f"{NODE}/save_map")
        self.load_client = self.node.create_client(LoadMap, f"{NODE}/load_map")

    def _on_detections(self, msg: Any) -> None:
        with self._detections_lock:
            self.detections.append(msg)

    def detection_at(self, stamp_ns: int) -> Any | None:
        with self._detections_lock:
            for msg in self.detections:
                if msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp_ns:
                    return msg
        return None


def mapping_settled(obs: Observer, frames: int) -> bool:
    """Every published frame is in, resolved and mapped or skipped; no keyframe is pending."""
    s = obs.number
    keyframes_done = (s("keyframes_segmented", 0) + s("keyframes_dropped", 0)
                      + s("keyframes_abandoned", 0))
    return (s("color_msgs") >= frames and s("frames_waiting") == 0
            and s("frame_queue_depth") == 0 and s("keyframe_queue_depth") == 0
            and s("frames_in") == s("frames_assembled")
            and s("keyframes_selected") == keyframes_done and s("map_voxels") > 0)


_VERSION = re.compile(r"map version (\d+) \(newest (\d+)\)")


def fresh_answers(client: Any, texts: list[str], timeout_s: float = 60.0) -> dict[str, Any]:
    """Each query's answer from the newest map version: the session answers from the last
    ready engine and builds the next one behind, so a query is repeated until its answer says
    it came from the newest version."""
    answers = {}
    for text in texts:
        deadline = time.monotonic() + timeout_s
        while True:
            answer = client.query(text, timeout_s=30.0)
            # after load_map the replaced (empty) map answers until the loaded one is ready
            assert answer.success or answer.message.startswith("map_not_ready"), answer.message
            match = _VERSION.search(answer.message)
            if match is not None and match.group(1) == match.group(2):
                answers[text] = answer
                break
            assert time.monotonic() < deadline, f"'{text}' never answered fresh: {answer.message}"
            time.sleep(0.2)
    return answers


def check_answer(check: Check, answer: Any) -> None:
    """``answer`` (a QueryAnswer) satisfies ``check``."""
    found = [(i.label, round(i.score, 2), [round(c, 2) for c in i.centroid_m], i.num_points)
             for i in answer.instances]
    where = f"{check.kind} '{check.text}': {found}; {answer.message}"
    if check.kind == "absent":
        assert not answer.instances, where
        return
    assert answer.instances, where
    best = np.asarray(answer.instances[0].centroid_m)
    to_right = min(float(np.linalg.norm(best - c)) for c in check.right)
    assert to_right <= NEAR_M, f"best instance {to_right:.2f} m from the true object; {where}"
    for c in check.wrong:
        assert to_right < float(np.linalg.norm(best - c)), f"nearer a wrong object; {where}"


def same_answers(before: Any, after: Any) -> None:
    """The restarted node names the same objects. Not bit-identical: the 3D branch's index of
    mask prototypes is rebuilt from scratch after a load, where the first node had updated it
    keyframe by keyframe, so geometric scores move by ~1e-4 (measured 7e-5) and a voxel at the
    score threshold may change side."""
    assert len(after.instances) == len(before.instances), (before.message, after.message)
    for a, b in zip(before.instances, after.instances, strict=True):
        assert a.label == b.label, (a, b)
        assert abs(a.num_points - b.num_points) <= max(2, 0.02 * a.num_points), (a, b)
        assert math.isclose(a.score, b.score, abs_tol=0.01), (a, b)
        np.testing.assert_allclose(a.centroid_m, b.centroid_m, atol=VOXEL_M)
        np.testing.assert_allclose(a.box_size_m, b.box_size_m, atol=2 * VOXEL_M)


def check_detections(obs: Observer, answer: Any) -> None:
    """The Detection3DArray published for ``answer``'s query repeats its instances."""
    wait_for(lambda: obs.detection_at(answer.stamp_ns) is not None,
             f"the detections of '{answer.query}'", timeout_s=30.0)
    msg = obs.detection_at(answer.stamp_ns)
    assert msg.header.frame_id == answer.frame_id == "map"
    assert len(msg.detections) == len(answer.instances)
    for det, inst in zip(msg.detections, answer.instances, strict=True):
        hyp = det.results[0].hypothesis
        assert hyp.class_id == inst.label
        assert math.isclose(hyp.score, inst.score, rel_tol=0, abs_tol=1e-6)
        c, s = det.bbox.center.position, det.bbox.size
        np.testing.assert_allclose([c.x, c.y, c.z], inst.centroid_m, atol=1e-6)
        np.testing.assert_allclose([s.x, s.y, s.z], inst.box_size_m, atol=1e-6)


# ---------------------------------------------------------------------- the test


def test_live_answers_match_the_ground_truth_and_survive_a_restart(
    scene: LiveScene, checkpoint: Path, tmp_path: Path
) -> None:
    from diff2scene_interfaces.srv import LoadMap, SaveMap

    from diff2scene_ros.client import QueryClient

    env = child_env()
    domain_id = int(env["ROS_DOMAIN_ID"])
    map_dir = tmp_path / "maps"
    texts = [c.text for c in scene.checks]
    obs = Observer(domain_id)
    client = QueryClient(NODE, domain_id=domain_id, timeout_s=60.0)
    try:
        with node_process(env, scene.directory, map_dir, checkpoint,
                          tmp_path / "node1.log") as node:
            played = play(scene.directory / "bag", env)
            assert played.returncode == 0, played.stdout + played.stderr
            wait_for(lambda: mapping_settled(obs, FRAMES) or node.poll() is not None,
                     f"the node to map the bag ({obs.values()})")
            assert node.poll() is None, (tmp_path / "node1.log").read_text()
            assert obs.number("frames_integrated") >= 0.8 * FRAMES, {
                k: v for k, v in obs.values().items() if "frame" in k or "skip" in k}
            # the answers come from both branches: the 3D network ran over the map
            assert obs.number("net3d_runs", 0) >= 1, obs.values()
            live = fresh_answers(client, texts)
            for check in scene.checks:
                check_answer(check, live[check.text])
            # issue 14: the standard detections of a query repeat its answer
            relation = next(c.text for c in scene.checks if c.kind == "relation")
            klass = next(c.text for c in scene.checks if c.kind == "class")
            for text in (klass, relation):
                check_detections(obs, client.query(text, timeout_s=30.0))
            saved = call_service(obs.save_client, SaveMap.Request(path="live.npz"), 120.0)
            assert saved.success, saved.message
            node.send_signal(signal.SIGINT)
            assert node.wait(timeout=60) == 0, (tmp_path / "node1.log").read_text()
        assert (map_dir / "live.npz").is_file()

        with node_process(env, scene.directory, map_dir, checkpoint,
                          tmp_path / "node2.log") as node:
            loaded = call_service(obs.load_client, LoadMap.Request(path="live.npz"), 120.0)
            assert loaded.success, loaded.message
            restored = fresh_answers(client, texts)
            assert node.poll() is None, (tmp_path / "node2.log").read_text()
        for text in texts:
            same_answers(live[text], restored[text])
    finally:
        client.close()
        obs.close()
