"""Offline replay: a bag through the same pipeline a robot runs, measured and written out.

``diff2scene replay BAG --out DIR [--config FILE] [--queries FILE] [--realtime RATE]`` reads
the bag with the frame source (the frame assembler the live node uses), feeds every frame to
:class:`~diff2scene.pipeline.Pipeline`, and writes into DIR:

* ``map.npz`` — the semantic map (``diff2scene map-info``, ``~/load_map``);
* ``bag/`` — a rosbag2 MCAP bag with what the node would have published: the labelled cloud
  (``/diff2scene/labelled_cloud``, at the last frame's stamp) and, one second apart after it,
  each query's text (``/diff2scene/query_text``), markers (``/diff2scene/query_markers``) and
  result cloud (``/diff2scene/query_cloud``);
* ``map_rgb.png``, ``map_labels.png`` and ``queries/NN_<query>.png`` (per-voxel score heat map);
* ``report.json`` / ``report.md`` / ``timing.png`` — frames/s, per-stage p50/p95/max latency,
  keyframes, drops, peak memory, input problems and the query answers
  (:mod:`diff2scene.replay_report`);
* ``eval.json`` / ``eval.md`` / ``eval.png`` — when the bag has ground truth beside it
  (``diff2scene synth``): mIoU per branch and query precision/recall;
* ``salvaged_bag/`` — only when the bag could not be opened: the readable part of its MCAP file.

Every mode drives the core :class:`~diff2scene.runtime.MappingRuntime`, the object under the
live node: the bag's messages go into its frame assembler, its frame worker decodes and maps,
its query session answers. Modes. **Deterministic** (default): frames are mapped and the 2D
model runs inline, frame by frame in bag order, so the same bag gives the same map and labels
every time (with a worker thread, the number of frames fused before a keyframe is unprojected
depends on thread timing, and so do its memberships). ``deterministic: false`` runs the 2D
model in the pipeline's worker thread (overlaps fusion with the model; results vary slightly
run to run). **Real time** (``--realtime RATE``): frames are released at RATE times the pace of
their stamps into the runtime's bounded frame queue, which drops its oldest frame when the
mapper falls behind, and the pipeline drops its oldest keyframe when the 2D model does — the
node's queues and policies, with every drop counted.

A bag that cannot be opened (an MCAP file cut short has no footer) is recovered as far as its
complete chunks go; a message that cannot be decoded costs its frame (counted, named in the
report); a read error in the middle stops reading there. In each case the map, bag and report
are written from what was read, and the report says what was wrong.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from tqdm import tqdm

from diff2scene.config import from_dict, load_yaml
from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.eval.evaluate import EvalConfig
from diff2scene.io.assembler import RawFrame
from diff2scene.io.bag import BagFrameSource, BagLayout, BagSourceConfig
from diff2scene.io.bag_writer import CLOUD_TOPIC
from diff2scene.io.cli import add_topic_flags, apply_topic_flags
from diff2scene.io.mcap_salvage import SalvageReport, find_mcap_file, salvage_mcap
from diff2scene.mapping.render import RenderConfig
from diff2scene.pipeline import CloseReport, Pipeline
from diff2scene.replay_report import (
    StageTimes,
    answer_query,
    run_report,
    skip_problems,
    write_report,
)
from diff2scene.runtime import MappingRuntime, RuntimeConfig, build_models, paced
from diff2scene.segmentation.base import Segmenter2D, TextEncoder

if TYPE_CHECKING:
    pass

_LOG = logging.getLogger(__name__)

#: Spacing of the query answers after the labelled cloud in the output bag, nanoseconds: a
#: player (Foxglove, ``ros2 bag play``) then shows them one at a time.
QUERY_SPACING_NS = 1_000_000_000
#: Most input warnings kept for the report (the counters have the totals).
_MAX_WARNINGS = 50


def _room_view() -> RenderConfig:
    return RenderConfig(top_down_max_z_m=2.0)


@dataclass
class ReplayConfig(RuntimeConfig):
    """Everything a replay needs besides the bag path: the runtime's settings (the node's,
    same names and defaults: ``pipeline``, ``input``, ``segmenter``, ``query`` …) and the
    replay's own, below. The pipeline's ``threaded`` and ``overflow_policy`` are set by the
    replay mode (``deterministic``, ``--realtime``), not read from the config."""

    #: Which topics of the bag hold the frames (chosen from the bag when absent).
    source: BagSourceConfig = field(default_factory=BagSourceConfig)
    #: Run the 2D model inline in bag order (same bag → same map, every time); False runs it
    #: in the pipeline's worker thread (faster on several cores, results vary slightly).
    #: Every keyframe is processed either way; ``--realtime`` overrides this.
    deterministic: bool = True
    #: With ground truth beside the bag and no ``labelling.classes``, label with the scene's
    #: classes (what the evaluation scores) instead of ``labelling.vocabulary``.
    label_with_scene_classes: bool = True
    #: Comparison with the bag's ground truth, when it has one.
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: Map pictures; the top-down view leaves out points above 2 m to see under a ceiling.
    render: RenderConfig = field(default_factory=_room_view)


def load_replay_config(path: str | Path | None) -> ReplayConfig:
    if path is None:
        return ReplayConfig()
    data = load_yaml(path)
    source = data.get("source")
    if isinstance(source, dict) and "input" in source:
        raise ConfigError(f"{path}: source.input is now input (top level, as the node's "
                          "parameters): move the block up one level")  # fmt: skip
    return from_dict(ReplayConfig, data)


def read_queries(path: str | Path) -> list[str]:
    """Queries of a text file: one per line; blank lines and lines starting with ``#`` are
    skipped. :class:`ConfigError` for a missing or unreadable file or one without a query."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read queries from {path}: {exc}") from exc
    queries = [line.strip() for line in text.splitlines()]
    queries = [q for q in queries if q and not q.startswith("#")]
    if not queries:
        raise ConfigError(f"{path} holds no query (one per line; # starts a comment)")
    return queries


# --------------------------------------------------------------------------- reading


@dataclass
class ReplayRun:
    """A bag read into a mapping runtime: the map, what was read, how long each stage took."""

    #: The runtime the bag was read into; its map is final, its queries still answer.
    runtime: MappingRuntime
    #: The bag actually read: the one given, or the salvaged copy of it.
    bag_read: Path
    layout: BagLayout
    #: "deterministic", "threaded" or "realtime".
    mode: str
    realtime_rate: float | None
    times: StageTimes
    #: Frames the bag source handed to the runtime (before its frame queue).
    frames_delivered: int
    #: The frame assembler's counters (messages, skips by reason, gaps).
    input_counters: dict[str, int | float]
    #: Input warnings logged while reading (they name the topic and stamp of bad messages).
    input_warnings: list[str]
    #: What was wrong with the bag, one sentence each; empty for a clean bag.
    problems: list[str]
    salvage: SalvageReport | None
    close: CloseReport
    #: Seconds from the first read to the closed pipeline.
    wall_s: float
    first_stamp_ns: int
    last_stamp_ns: int
    #: The exception that ended reading early, if one did.
    error: Exception | None = None
    #: Realtime mode: the furthest the reader (read + pairing) fell behind the pace, seconds.
    reader_lag_s_max: float = 0.0

    @property
    def pipeline(self) -> Pipeline:
        return self.runtime.pipeline

    @property
    def map_frame(self) -> str:
        """The fixed frame of the map (the frame of every output)."""
        return self.runtime.map_frame


class _WarningLog(logging.Handler):
    """Keeps the first warnings of the frame source (they name what was skipped, and why)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < _MAX_WARNINGS:
            self.messages.append(record.getMessage())


def _open_source(
    bag: Path, config: ReplayConfig, salvage_dir: Path | None, problems: list[str]
) -> tuple[BagFrameSource, dict[str, tuple[str, int]], SalvageReport | None]:
    """The frame source of ``bag``, or of the salvaged part of its MCAP file when the bag
    cannot be opened; the topics it has; the salvage report if one was needed."""
    source = BagFrameSource(bag, config.source, input_config=config.input)
    try:
        return source, source.topics(), None
    except DataFormatError as exc:
        mcap = find_mcap_file(bag)
        if mcap is None or salvage_dir is None:
            raise
        try:
            salvage = salvage_mcap(mcap, salvage_dir)
        except DataFormatError as salvage_exc:
            raise DataFormatError(f"{exc}; recovering it failed too: {salvage_exc}") from exc
        problems.append(f"the bag cannot be opened ({exc}); {salvage.describe()}")
        source = BagFrameSource(salvage_dir, config.source, input_config=config.input)
        return source, source.topics(), salvage


def run_replay(
    bag: str | Path,
    config: ReplayConfig,
    *,
    segmenter: Segmenter2D,
    text_encoder: TextEncoder,
    progress: bool = True,
    realtime_rate: float | None = None,
    salvage_dir: Path | None = None,
    times: StageTimes | None = None,
) -> ReplayRun:
    """Read ``bag`` into a new mapping runtime (see the module doc for the modes); its
    pipeline is flushed and closed when this returns, and its queries answer from the map.

    ``salvage_dir``: where the readable part of a damaged MCAP file is written — one that
    cannot be opened, or whose reading fails part-way (a corrupt chunk); the replay then reads
    that copy. None: a bag that cannot be opened raises :class:`DataFormatError`, and a read
    error part-way ends the replay there (reported in ``problems``). Raises
    :class:`DataFormatError` when nothing of the bag can be read or it has no usable topics,
    :class:`ConfigError` for a ``realtime_rate`` that is not positive.
    """
    bag = Path(bag)
    if realtime_rate is not None and not realtime_rate > 0:
        raise ConfigError(f"--realtime RATE must be > 0, got {realtime_rate}")
    times = times or StageTimes()
    problems: list[str] = []
    source, _topics, salvage = _open_source(bag, config, salvage_dir, problems)

    def read(source: BagFrameSource) -> ReplayRun:
        return _read(bag, source, config=config, segmenter=segmenter,
                     text_encoder=text_encoder, progress=progress,
                     realtime_rate=realtime_rate, times=times)  # fmt: skip

    run = read(source)
    mcap = find_mcap_file(bag)
    if run.error is not None and salvage is None and salvage_dir is not None and mcap:
        # A corrupt chunk in the middle: rosbags stops there, but the chunks after it are
        # readable. Start again from a copy without the bad chunk (a new map: a second pass
        # over the frames read so far would count them twice).
        problems.append(f"reading {bag} failed part-way ({_read_error(run)}); replayed the "
                        "readable part of it instead")  # fmt: skip
        try:
            salvage = salvage_mcap(mcap, salvage_dir)
        except DataFormatError as exc:
            problems.append(f"recovering it failed: {exc}")
        else:
            problems.append(salvage.describe())
            times.clear()
            run = read(BagFrameSource(salvage_dir, config.source, input_config=config.input))
    if run.error is not None:
        problems.append(_read_error(run))
    problems.extend(skip_problems(run.input_counters))
    run.problems = problems
    run.salvage = salvage
    return run


def _read_error(run: ReplayRun) -> str:
    exc = run.error
    return (
        f"reading {run.bag_read} stopped after {run.frames_delivered} frame(s)"
        + (f" (last stamp {run.last_stamp_ns} ns)" if run.frames_delivered else "")
        + f": {type(exc).__name__}: {exc}"
    )


#: Replay mode → (pipeline threaded, 2D queue policy, where frames are mapped).
_MODES: dict[str, tuple[bool, Literal["drop_oldest", "block"], Literal["queue", "inline"]]] = {
    "realtime": (True, "drop_oldest", "queue"),
    "deterministic": (False, "block", "inline"),
    "threaded": (True, "block", "inline"),
}


def _read(
    bag: Path,
    source: BagFrameSource,
    *,
    config: ReplayConfig,
    segmenter: Segmenter2D,
    text_encoder: TextEncoder,
    progress: bool,
    realtime_rate: float | None,
    times: StageTimes,
) -> ReplayRun:
    """One pass over ``source`` into a new runtime, whose pipeline is closed at the end."""
    layout = source.layout
    if realtime_rate is not None:
        mode = "realtime"
    else:
        mode = "deterministic" if config.deterministic else "threaded"
    threaded, overflow, frames = _MODES[mode]
    runtime = MappingRuntime(
        replace(config, pipeline=replace(config.pipeline, threaded=threaded,
                                         overflow_policy=overflow)),
        segmenter=segmenter, text_encoder=text_encoder, frames=frames,
        expect_instances=bool(layout.instance_topic), background_queries=False,
        on_stage_time=times.add,
    )  # fmt: skip
    metadata = runtime.pipeline.map.metadata
    metadata["source_bag"] = str(bag)
    metadata["replay_mode"] = mode
    total = source.topics().get(layout.color_topic, ("", 0))[1] // config.source.frame_stride
    if config.source.max_frames:
        total = min(total, config.source.max_frames)
    state = _ReadState()
    lag_s = [0.0]
    warnings = _WarningLog()
    io_log = logging.getLogger("diff2scene.io")
    io_log.addHandler(warnings)
    t0 = time.perf_counter()
    try:
        with tqdm(total=total or None, desc="replay", unit="frame", disable=not progress) as bar:
            raws = _timed(source.raw_frames(runtime.assembler), times, state)
            if realtime_rate is not None:
                raws = paced(raws, realtime_rate, lag_s)
            for raw in raws:
                runtime.submit([raw])
                bar.update(1)
                if state.delivered % _MEMORY_EVERY_FRAMES == 0:
                    times.sample_memory()
        close = runtime.finish()
    finally:
        io_log.removeHandler(warnings)
    wall_s = time.perf_counter() - t0
    times.sample_memory()
    counters = runtime.assembler.counters()
    metadata["frame_source_stats"] = counters
    return ReplayRun(
        runtime=runtime, bag_read=source.path, layout=layout, mode=mode,
        realtime_rate=realtime_rate, times=times, frames_delivered=state.delivered,
        input_counters=counters, input_warnings=warnings.messages, problems=[],
        salvage=None, close=close, wall_s=wall_s, first_stamp_ns=state.first_stamp_ns,
        last_stamp_ns=state.last_stamp_ns, error=state.error, reader_lag_s_max=lag_s[0],
    )  # fmt: skip


@dataclass
class _ReadState:
    delivered: int = 0
    first_stamp_ns: int = 0
    last_stamp_ns: int = 0
    error: Exception | None = None

    def saw(self, raw: RawFrame) -> None:
        if self.delivered == 0:
            self.first_stamp_ns = raw.stamp_ns
        self.delivered += 1
        self.last_stamp_ns = raw.stamp_ns


#: Memory is sampled every this many frames (a /proc read; cheap, but not free).
_MEMORY_EVERY_FRAMES = 5


def _timed(raws: Iterator[RawFrame], times: StageTimes, state: _ReadState
           ) -> Iterator[RawFrame]:
    """``raws`` with the time each took to read recorded; an error reading the bag ends
    them and is kept in ``state`` (bag content is untrusted, and rosbags raises many types)."""
    while True:
        t0 = time.perf_counter()
        try:
            raw = next(raws)
        except StopIteration:
            return
        except Exception as exc:
            state.error = exc
            return
        times.add("read", time.perf_counter() - t0)
        state.saw(raw)
        yield raw


def replay(
    bag: str | Path,
    config: ReplayConfig,
    *,
    segmenter: Segmenter2D,
    text_encoder: TextEncoder,
    progress: bool = True,
) -> Pipeline:
    """Run every frame of ``bag`` through a new runtime (deterministic mode unless the config
    says otherwise); returns its pipeline, flushed and closed."""
    return run_replay(bag, config, segmenter=segmenter, text_encoder=text_encoder,
                      progress=progress).pipeline


# --------------------------------------------------------------------------- outputs

#: Files and directories a replay writes into its output directory.
_OUTPUT_FILES = (
    "map.npz", "report.json", "report.md", "timing.png", "map_rgb.png", "map_labels.png",
    "eval.json", "eval.md", "eval.png",
)  # fmt: skip
_OUTPUT_BAGS = ("bag", "salvaged_bag")


def _check_out(out: Path, *, force: bool) -> list[Path]:
    """The earlier replay outputs in ``out`` that ``force`` allows to replace; refused
    without it, or when a directory of them holds files a replay does not write."""
    existing = [out / n for n in (*_OUTPUT_FILES, *_OUTPUT_BAGS, "queries") if (out / n).exists()]
    if existing and not force:
        names = ", ".join(p.name for p in existing)
        raise ConfigError(f"{out} already holds replay outputs ({names}); pass --force")
    for path in existing:
        if path.name in _OUTPUT_BAGS or path.name == "queries":
            allowed = {".mcap", ".yaml"} if path.name in _OUTPUT_BAGS else {".png"}
            strays = [c for c in path.iterdir() if c.suffix not in allowed or c.is_dir()]
            if strays:
                raise ConfigError(f"{path} holds files a replay does not write ({strays[0]})")
    return existing


def _prepare_out(out: Path, *, force: bool) -> None:
    """Make ``out``, deleting an earlier replay's outputs if ``force`` (never a file a
    replay does not write)."""
    for path in _check_out(out, force=force):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def replay_to_dir(
    bag: str | Path,
    out: str | Path,
    config: ReplayConfig,
    *,
    segmenter: Segmenter2D,
    encoder: TextEncoder,
    queries: Sequence[str] = (),
    realtime_rate: float | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Replay ``bag`` and write the map, output bag, pictures and reports into ``out`` (see
    the module doc); returns the report (also in ``out/report.json``)."""
    from diff2scene.eval.datasets import scene_beside
    from diff2scene.eval.evaluate import evaluate_scene, summarise
    from diff2scene.eval.evaluate import write_report as write_eval
    from diff2scene.io.bag_writer import ResultBagWriter
    from diff2scene.mapping.render import render_map

    bag, out = Path(bag), Path(out)
    _prepare_out(out, force=force)
    if config.pipeline.memory_budget_mb and not config.pipeline.spill_dir:
        # Spilled blocks wait beside the map they belong to (removed when the replay ends).
        config = replace(config, pipeline=replace(config.pipeline, spill_dir=str(out / "spill")))
    times = StageTimes()
    times.sample_memory()
    run = run_replay(
        bag, config, segmenter=segmenter, text_encoder=encoder, progress=progress,
        realtime_rate=realtime_rate, salvage_dir=out / "salvaged_bag", times=times,
    )  # fmt: skip
    runtime = run.runtime
    pipeline = runtime.pipeline
    outputs = [pipeline.save(out / "map.npz")]
    with pipeline.lock:
        snapshot = pipeline.map.snapshot()
    scene = scene_beside(bag)
    if scene is not None and config.label_with_scene_classes and not config.labelling.classes:
        runtime.set_vocabulary(classes=list(scene.class_names))
    problems = list(run.problems)
    answers: list[dict[str, Any]] = []
    evaluation: dict[str, Any] | None = None
    end_ns = run.last_stamp_ns
    bag_out = out / "bag"
    with ResultBagWriter(bag_out, frame_id=run.map_frame) as writer:
        if snapshot.num_voxels == 0:
            problems.append("the map is empty (no frame was integrated): no labels, no queries")
        else:
            t0 = time.perf_counter()
            runtime.session.engine()
            times.add("query_engine_build", time.perf_counter() - t0)
            t0 = time.perf_counter()
            cloud = runtime.labelled_cloud()
            times.add("labelling", time.perf_counter() - t0)
            lab = runtime.session.labelling().labelling
            writer.write_cloud(CLOUD_TOPIC, end_ns, cloud.points_m, rgb=cloud.rgb,
                               labels=cloud.labels, scores=cloud.scores)  # fmt: skip
            outputs.append(render_map(snapshot.points_m, out / "map_rgb.png",
                                      colors=np.asarray(snapshot.colors), title="fused colour",
                                      config=config.render))  # fmt: skip
            outputs.append(render_map(snapshot.points_m, out / "map_labels.png",
                                      labels=lab.labels, label_names=lab.names,
                                      title=f"labels ({config.labelling.branch})",
                                      config=config.render))  # fmt: skip
            for i, text in enumerate(queries, start=1):
                stamp_ns = end_ns + i * QUERY_SPACING_NS
                answers.append(answer_query(runtime, text, index=i, stamp_ns=stamp_ns,
                                       writer=writer, out=out, times=times,
                                       render=config.render))  # fmt: skip
                outputs.extend(out / a["heatmap"] for a in answers[-1:] if a.get("heatmap"))
            if scene is not None:
                t0 = time.perf_counter()
                evaluation = summarise([evaluate_scene(scene, runtime.session.engine(),
                                                       config.eval)])  # fmt: skip
                outputs.extend(write_eval(evaluation, out, name="eval"))
                times.add("evaluation", time.perf_counter() - t0)
    outputs.insert(1, bag_out)
    report = run_report(
        run, config, bag=bag, map_voxels=snapshot.num_voxels, map_masks=snapshot.num_masks,
        problems=problems, answers=answers, evaluation=evaluation,
        output_bag_messages=writer.counts,
        outputs=[str(p.relative_to(out)) for p in outputs],
    )  # fmt: skip
    write_report(report, out, times)
    return report


# --------------------------------------------------------------------------- command line


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a bag through the pipeline: map, output bag, pictures, timing report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory or file (sqlite3 or MCAP)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--config", type=Path, default=None, help="ReplayConfig YAML")
    parser.add_argument("--queries", type=Path, default=None,
                        help="text file, one query per line (# comments)")
    parser.add_argument("--realtime", type=float, default=None, metavar="RATE",
                        help="pace frames at RATE x the bag's stamps with the node's drop "
                        "policy (default: every frame, deterministic)")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace the outputs of an earlier replay in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_topic_flags(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.suffix == ".npz":
        raise ConfigError(
            f"--out is an output directory (the map is written as DIR/map.npz), got {out}"
        )
    config = load_replay_config(args.config)
    config.source, config.input = apply_topic_flags(config.source, config.input, args)
    queries = read_queries(args.queries) if args.queries is not None else []
    _check_out(out, force=args.force)  # before any work, not after the replay
    # The bag first: a missing bag or unusable topics are the problem to name, not the
    # models (the oracle would complain about ground truth beside a bag that is not there).
    probe = BagFrameSource(args.bag, config.source, input_config=config.input)
    try:
        probe.topics()
    except DataFormatError:
        if find_mcap_file(args.bag) is None:
            raise
        print(f"{args.bag} cannot be opened; recovering what is readable of it")
    else:
        layout = probe.layout
        print(f"reading {layout.color_topic} + {layout.depth_topic} + "
              f"{layout.camera_info_topic}, pose from {layout.pose_topic or 'TF'}")
        for note in layout.notes:
            print(f"  (auto) {note}")
    segmenter, encoder = build_models(config, bag=args.bag)
    report = replay_to_dir(
        args.bag, out, config, segmenter=segmenter, encoder=encoder, queries=queries,
        realtime_rate=args.realtime, progress=not args.no_progress, force=args.force,
    )  # fmt: skip
    run = report["run"]
    print(f"{report['frames']['mapped']} frames in {run['wall_s']:.1f} s "
          f"({run['frames_per_s']} frames/s, mode {run['mode']}); "
          f"{report['keyframes']['segmented']} keyframes; map {report['map']['voxels']} voxels")
    for stage, s in report["stages_ms"].items():
        print(f"  {stage:<18} n={s['count']:<5} p50 {s['p50_ms']:9.1f} ms  "
              f"p95 {s['p95_ms']:9.1f} ms  max {s['max_ms']:9.1f} ms")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}")
    print(f"outputs in {out} (report.md)")
    # A damaged bag still gives results, but a script must be able to tell.
    return 1 if report["problems"] else 0
