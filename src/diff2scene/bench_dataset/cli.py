"""``diff2scene bench-dataset SCENES... --out DIR``: replay every scene of a dataset as Ray
tasks and pool the results into one table.

Each SCENE is a bag (a recording, a ``diff2scene import`` output) or a directory holding one
as ``bag`` with its ground truth beside it (``diff2scene synth``, ``diff2scene import --out
SCENE/bag``). Each is replayed as ``diff2scene replay`` would, with the same ``--config`` and
``--queries``, into ``DIR/scenes/<name>/`` (the replay scores it against the ground truth
beside its bag: synthetic, ScanNet or Replica); then
``DIR/dataset_report.{json,md,png}`` pools them: mIoU per branch and head/common/tail over
every scene's points, query precision/recall, per-scene rows, frames/s and stage latencies
across scenes, and the failures.

A scene that fails or runs past ``--timeout-s`` is tried again once, then reported with its
error; the others go on. ``--resume`` keeps the scenes whose outputs are complete and replays
the rest. Ctrl-C cancels the running tasks and still writes the report of what finished.
Exit status: 0 when every scene is done, 1 when one failed, 130 when interrupted, 2 for a bad
command line or config.

With ``--train-scenes`` (or ``--train-config``), the 3D network is first distilled from those
scenes (as ``diff2scene train``, in this process) and every replay runs it: its checkpoint
goes into the replay config's ``pipeline.net3d.checkpoint``. For several machines, train
under ``torchrun`` instead and pass the checkpoint in ``--config``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from diff2scene.bench_dataset.report import build_report, write_report
from diff2scene.bench_dataset.runner import RayOptions, SceneResult, ray_session, run_scenes
from diff2scene.bench_dataset.scenes import (
    SCENES_DIR,
    Scene,
    SceneTask,
    one_line,
    outputs_complete,
    resolve_scene,
    resolve_scenes,
)
from diff2scene.errors import ConfigError
from diff2scene.replay import ReplayConfig, load_replay_config, read_queries

#: Exit status of a run ended by Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


def plan(scenes: list[Scene], out: Path, *, resume: bool, force: bool
         ) -> tuple[list[tuple[Scene, bool]], list[str]]:
    """Which scenes to replay (with whether to replace what their directory holds) and which
    to keep. Outputs of an earlier run are kept with ``resume`` when complete, replaced with
    ``force``; without either, :class:`ConfigError` names them (before any work)."""
    todo: list[tuple[Scene, bool]] = []
    kept: list[str] = []
    occupied: list[str] = []
    for scene in scenes:
        scene_dir = out / SCENES_DIR / scene.name
        used = scene_dir.is_dir() and any(scene_dir.iterdir())
        if resume and not force and used and outputs_complete(scene_dir):
            kept.append(scene.name)
        elif used and not (resume or force):
            occupied.append(scene.name)
        else:
            todo.append((scene, used))
    if occupied:
        raise ConfigError(f"{out / SCENES_DIR} already holds outputs of {', '.join(occupied)}: "
                          "pass --resume to keep the complete ones or --force to replay all")
    return todo, kept


def distil(args: argparse.Namespace, config: ReplayConfig, out: Path) -> dict[str, Any]:
    """Train the 3D network on ``--train-scenes`` into ``DIR/net3d``, and point ``config``'s
    pipeline at its checkpoint. With ``--resume``, a finished checkpoint there is reused."""
    from diff2scene.config import load_config
    from diff2scene.net3d.model import MinkUNetConfig
    from diff2scene.net3d.train import TrainConfig, train
    from diff2scene.runtime import build_models

    given = [Path(p) for p in args.train_scenes or []]
    if args.train_config is not None:
        tc = load_config(TrainConfig, args.train_config)
        given = given or [Path(p) for p in tc.scenes]
    if not given:
        raise ConfigError("no training scenes: pass --train-scenes or list them in "
                          "--train-config's scenes")
    train_scenes = [resolve_scene(p) for p in given]
    if args.train_config is None:
        # The replays' own 2D model, input and mapper; the heads fit its embedding spaces.
        segmenter, _ = build_models(config, bag=train_scenes[0].bag)
        tc = TrainConfig(segmenter=config.segmenter, bag=config.source, input=config.input,
                         mapper=config.pipeline.mapper,
                         model=MinkUNetConfig(head_dims=dict(segmenter.embedding_dims)))
    tc.scenes = [s.given for s in train_scenes]
    tc.out_dir = out / "net3d"
    if tc.cache_dir == TrainConfig().cache_dir:  # relative to wherever this runs: keep it in DIR
        tc.cache_dir = out / "net3d" / "cache"
    if args.train_epochs is not None:
        tc.epochs = args.train_epochs
    final = tc.out_dir / "checkpoints" / f"epoch_{tc.epochs:04d}.safetensors"
    t0 = time.perf_counter()
    if args.resume and final.is_file():
        checkpoint, trained_now = final, False
    else:
        result = train(tc, progress=not args.no_progress)
        if result.checkpoint is None:
            raise ConfigError(f"training wrote no checkpoint into {tc.out_dir}")
        checkpoint, trained_now = result.checkpoint, True
    config.pipeline.net3d = replace(config.pipeline.net3d, checkpoint=checkpoint)
    return {"checkpoint": str(checkpoint), "train_scenes": [s.name for s in train_scenes],
            "epochs": tc.epochs, "trained_now": trained_now,
            "train_s": round(time.perf_counter() - t0, 3)}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """The command: plan, train if asked, replay on Ray, write the report."""
    out: Path = args.out.expanduser().absolute()
    config = load_replay_config(args.config)
    queries = tuple(read_queries(args.queries)) if args.queries is not None else ()
    options = RayOptions(
        address=args.address, workers=args.workers, cpus_per_scene=args.cpus_per_scene,
        gpus_per_scene=args.gpus_per_scene, timeout_s=args.timeout_s or None,
        retries=args.retries,
    )  # fmt: skip
    scenes = resolve_scenes(args.scenes)
    todo, kept = plan(scenes, out, resume=args.resume, force=args.force)
    training = bool(args.train_scenes or args.train_config)
    if args.train_epochs is not None and not training:
        raise ConfigError("--train-epochs needs --train-scenes or --train-config")
    net3d = distil(args, config, out) if training else None
    threads = max(1, int(options.cpus_per_scene))
    tasks = [SceneTask(scene, out / SCENES_DIR / scene.name, config, queries,
                       force=replace_it, threads=threads)
             for scene, replace_it in todo]  # fmt: skip
    if kept:
        print(f"keeping {len(kept)} complete scene(s) of an earlier run: {', '.join(kept)}")
    with ray_session(options) as cluster:
        t0 = time.perf_counter()  # the scenes' time, not Ray's start (a cluster has none)
        print(f"{len(tasks)} scene(s) on {cluster['address']} Ray: {cluster['cpus']:g} CPUs, "
              f"{cluster['gpus']:g} GPUs, {options.cpus_per_scene:g} CPU / "
              f"{options.gpus_per_scene:g} GPU per scene")
        with tqdm(total=len(scenes), initial=len(kept), desc="scenes", unit="scene",
                  disable=args.no_progress) as bar:  # fmt: skip

            def on_result(result: SceneResult) -> None:
                bar.update(1)
                note = f"failed: {one_line(result.error)}" if result.status == "failed" else "done"
                bar.write(f"  {result.name}: {note} ({len(result.attempts)} attempt(s))")

            results, interrupted = run_scenes(tasks, options, on_result=on_result)
        wall_s = time.perf_counter() - t0
    report = build_report(out, scenes, results, resumed=kept, wall_s=wall_s, cluster=cluster,
                          interrupted=interrupted, net3d=net3d)  # fmt: skip
    write_report(report, out)
    _print_summary(report, out)
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if report["failed"] else 0


def _print_summary(report: dict[str, Any], out: Path) -> None:
    print(f"{report['done']} replayed, {report['resumed']} kept, {report['failed']} failed, "
          f"{report['cancelled']} cancelled in {report['wall_s']:.1f} s")
    ev = report["evaluation"]
    if ev is not None:
        for branch, e in ev["branches"].items():
            splits = ", ".join(f"{k[5:]} {100 * v:.1f}" for k, v in e.items()
                               if k.startswith("miou_") and v is not None)  # fmt: skip
            print(f"  mIoU {branch:<9} (pooled over {len(ev['scenes_pooled'])} scenes): {splits}")
    for failure in report["failures"]:
        print(f"  FAILED {failure['name']}: {one_line(failure['error'])}")
    print(f"report in {out}/dataset_report.md")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench-dataset",
        help="replay many scenes as Ray tasks and pool them into one table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenes", type=Path, nargs="+", metavar="SCENE",
                        help="bag, or `diff2scene synth` scene directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--config", type=Path, default=None,
                        help="ReplayConfig YAML for every scene")
    parser.add_argument("--queries", type=Path, default=None,
                        help="text file, one query per line, asked in every scene")
    ray_group = parser.add_argument_group("where the replays run (Ray)")
    ray_group.add_argument("--address", default=None,
                           help="join a running Ray cluster (auto, HOST:PORT or "
                           "ray://HOST:10001); default: start a local one")  # fmt: skip
    ray_group.add_argument("--workers", type=int, default=RayOptions().workers,
                           help="CPUs of the local Ray (default: this machine's cores; "
                           "a cluster joined with --address has its own)")  # fmt: skip
    ray_group.add_argument("--cpus-per-scene", type=float, default=1.0,
                           help="CPUs each scene's task asks for (default 1)")
    ray_group.add_argument("--gpus-per-scene", type=float, default=0.0,
                           help="GPUs each scene's task asks for, fractions share one "
                           "(default 0)")  # fmt: skip
    ray_group.add_argument("--timeout-s", type=float, default=RayOptions().timeout_s,
                           help="cancel an attempt after this many seconds; 0: no limit "
                           "(default %(default)s)")  # fmt: skip
    ray_group.add_argument("--retries", type=int, default=RayOptions().retries,
                           help="further attempts of a failed scene (default %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the scenes whose outputs in --out are complete")
    parser.add_argument("--force", action="store_true",
                        help="replay every scene, replacing earlier outputs in --out")
    train_group = parser.add_argument_group("distil the 3D network first (optional)")
    train_group.add_argument("--train-scenes", type=Path, nargs="+", default=None,
                             metavar="SCENE", help="training split: train on these scenes "
                             "and replay with the result")  # fmt: skip
    train_group.add_argument("--train-config", type=Path, default=None,
                             help="TrainConfig YAML (default: the replay config's 2D model, "
                             "input and mapper, MinkUNet18A)")  # fmt: skip
    train_group.add_argument("--train-epochs", type=int, default=None,
                             help="override the training epochs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
