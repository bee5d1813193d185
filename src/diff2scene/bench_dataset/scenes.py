"""The scenes of a dataset benchmark and the work done for each, wherever it runs.

:func:`replay_scene` is what one Ray task runs: it builds the models and replays one bag into
``DIR/scenes/<name>/`` with :func:`diff2scene.replay.replay_to_dir`, exactly as
``diff2scene replay`` would (which scores the map against the ground truth it finds beside
the bag, in any known layout), and never raises: a scene's failure comes back as an outcome, so
the driver decides whether to retry and the other scenes go on. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diff2scene.errors import ConfigError, DataFormatError
from diff2scene.replay import ReplayConfig

#: Where each scene's replay outputs go, under the benchmark's output directory.
SCENES_DIR = "scenes"
#: Characters of a failure's traceback kept for the report (its last lines say where).
_TRACEBACK_CHARS = 2000


@dataclass(frozen=True)
class Scene:
    """One scene to replay: its name in the report and under ``DIR/scenes/``, and its bag."""

    name: str
    #: The rosbag2 directory or file replayed.
    bag: Path
    #: The path as given on the command line (the bag, or the directory holding it).
    given: Path


def resolve_scene(path: Path) -> Scene:
    """A scene given as a bag, or as a directory holding one as ``bag`` with its ground truth
    beside it (``diff2scene synth`` and ``diff2scene import --out DIR/bag`` write that). The
    name is the directory's; a bag called ``bag`` is named after the directory holding it.
    Paths are made absolute: tasks run elsewhere."""
    path = path.expanduser().absolute()
    if not (path / "metadata.yaml").exists() and (path / "bag").exists():
        return Scene(path.name, path / "bag", path)
    name = path.parent.name if path.name == "bag" else path.name
    name = name.removesuffix(".mcap").removesuffix(".db3")
    return Scene(name, path, path)


def resolve_scenes(paths: Sequence[Path]) -> list[Scene]:
    """:func:`resolve_scene` of each path; :class:`ConfigError` when two get the same name
    (their outputs would share a directory) or a path does not exist."""
    scenes = []
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.expanduser().exists():
            raise ConfigError(f"scene not found: {path}")
        scene = resolve_scene(path)
        if scene.name in seen:
            raise ConfigError(f"two scenes are named {scene.name!r} ({seen[scene.name]} and "
                              f"{path}): their outputs would share DIR/scenes/{scene.name}")
        seen[scene.name] = path
        scenes.append(scene)
    if not scenes:
        raise ConfigError("no scene given")
    return scenes


def one_line(text: str | None, max_chars: int = 300) -> str:
    """``text`` on one line (errors of YAML or rosbags span several), cut to ``max_chars``."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outputs_complete(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished replay: ``report.json`` (written last) reads
    back, has its run section, and every output it lists is there (``eval.json`` among them
    when the scene has ground truth)."""
    report = read_json(out_dir / "report.json")
    if report is None or not isinstance(report.get("run"), dict):
        return False
    outputs = report.get("outputs")
    if not isinstance(outputs, list):
        return False
    return all((out_dir / str(name)).exists() for name in outputs)


@dataclass(frozen=True)
class SceneTask:
    """Everything one replay needs; sent to the worker that runs it (so: picklable)."""

    scene: Scene
    #: ``DIR/scenes/<name>``.
    out_dir: Path
    config: ReplayConfig
    queries: tuple[str, ...] = ()
    #: Replace earlier outputs in ``out_dir`` (a retry, a resumed incomplete scene, --force).
    force: bool = False
    #: Torch's intra-op threads in the task: the CPUs it was given, so that tasks sharing a
    #: node do not each spread over all its cores (torch would take every core it sees).
    threads: int = 1


@dataclass(frozen=True)
class SceneOutcome:
    """How one attempt at a scene went (small: it travels back to the driver)."""

    name: str
    ok: bool
    #: ``Type: message`` of what failed; None when ``ok``.
    error: str | None
    #: The end of the failure's traceback, for the JSON report.
    traceback: str | None
    #: Seconds the attempt took on its worker (models, replay, outputs).
    task_s: float
    #: Where it ran (a cluster has several hosts).
    host: str
    pid: int
    #: CPU seconds the worker process spent on it, all threads: what the scene costs,
    #: whatever else ran on the machine (below ``task_s`` when the task waited for a core).
    cpu_s: float = 0.0


def replay_scene(task: SceneTask) -> SceneOutcome:
    """Replay ``task``'s bag into its output directory; what failed, if anything, is in the
    outcome, not raised (bag content is untrusted, and a model can fail in many ways)."""
    import torch

    from diff2scene.io.bag import BagFrameSource
    from diff2scene.io.mcap_salvage import find_mcap_file
    from diff2scene.replay import replay_to_dir
    from diff2scene.runtime import build_models

    torch.set_num_threads(max(1, task.threads))
    t0, cpu0 = time.perf_counter(), time.process_time()
    config, bag = task.config, task.scene.bag
    try:
        # The bag before the models: an unreadable bag is the problem to name (the oracle
        # would instead say the ground truth beside it is missing). A damaged MCAP file is
        # left to the replay, which salvages what it can.
        try:
            BagFrameSource(bag, config.source, input_config=config.input).topics()
        except DataFormatError:
            if find_mcap_file(bag) is None:
                raise
        segmenter, encoder = build_models(config, bag=bag)
        replay_to_dir(bag, task.out_dir, config, segmenter=segmenter, encoder=encoder,
                      queries=task.queries, progress=False, force=task.force)  # fmt: skip
    except Exception as exc:
        tb = traceback.format_exc()
        return SceneOutcome(task.scene.name, False, f"{type(exc).__name__}: {exc}",
                            tb[-_TRACEBACK_CHARS:], time.perf_counter() - t0,
                            socket.gethostname(), os.getpid(),
                            time.process_time() - cpu0)  # fmt: skip
    return SceneOutcome(task.scene.name, True, None, None, time.perf_counter() - t0,
                        socket.gethostname(), os.getpid(), time.process_time() - cpu0)
