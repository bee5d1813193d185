"""``diff2scene eval MAP SCENE``: score a saved map against a ground-truth scene directory.

SCENE is a synthetic dataset directory (``diff2scene synth``), a ScanNet scene or a Replica
scene (layouts in :mod:`diff2scene.eval.datasets`). The map's masks are classified with the
configured segmenter's ``classify`` (the oracle for synthetic scenes; it needs no images);
the report goes to ``--out`` as ``eval.json``, ``eval.md`` and ``eval.png``. An optional
YAML CONFIG has the sections ``segmenter`` (``SegmenterConfig``), ``ensemble``,
``query`` and ``eval``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diff2scene.eval.evaluate import EvalConfig


def _segmenter_config() -> Any:
    from diff2scene.segmentation.factory import SegmenterConfig

    return SegmenterConfig()


@dataclass
class EvalCommandConfig:
    """Everything ``diff2scene eval`` needs besides the paths."""

    #: 2D model whose ``classify`` scores the map's masks, and its text encoder.
    segmenter: Any = field(default_factory=_segmenter_config)
    #: Ensemble weights and geometric-index approximation (``EnsembleConfig``).
    ensemble: Any = None
    #: Query background, thresholds, relations (``QueryConfig``).
    query: Any = None
    #: Label transfer and matching (``EvalConfig``).
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_command_config(path: Path | None) -> EvalCommandConfig:
    from diff2scene.config import from_dict, load_yaml
    from diff2scene.query.engine import QueryConfig
    from diff2scene.query.ensemble import EnsembleConfig
    from diff2scene.segmentation.factory import SegmenterConfig

    data = {} if path is None else load_yaml(path)
    return EvalCommandConfig(
        segmenter=from_dict(SegmenterConfig, data.get("segmenter", {}), where="segmenter"),
        ensemble=from_dict(EnsembleConfig, data.get("ensemble", {}), where="ensemble"),
        query=from_dict(QueryConfig, data.get("query", {}), where="query"),
        eval=from_dict(EvalConfig, data.get("eval", {}), where="eval"),
    )


def _run(args: argparse.Namespace) -> int:
    from diff2scene.errors import ConfigError
    from diff2scene.eval.datasets import load_scene
    from diff2scene.eval.evaluate import evaluate_scene, summarise, write_report
    from diff2scene.mapping.semantic_map import SemanticMap
    from diff2scene.query.session import QuerySession
    from diff2scene.segmentation.factory import build_segmenter

    cfg = load_command_config(args.config)
    known = {"segmenter", "ensemble", "query", "eval"}
    if args.config is not None:
        from diff2scene.config import load_yaml

        unknown = set(load_yaml(args.config)) - known
        if unknown:
            raise ConfigError(f"{args.config}: unknown section(s) {sorted(unknown)}")
    scene = load_scene(args.scene, args.format, vocabulary=args.vocabulary)
    smap = SemanticMap.load(args.map)
    segmenter, encoder = build_segmenter(cfg.segmenter, bag=Path(args.scene) / "bag")
    session = QuerySession.of_snapshot(
        smap.snapshot(), encoder, segmenter, query=cfg.query, ensemble=cfg.ensemble
    )
    engine = session.engine()
    report = summarise([evaluate_scene(scene, engine, cfg.eval)])
    paths = write_report(report, args.out)
    for branch, entry in report["branches"].items():
        print(f"{branch:>9}: mIoU {entry['miou_all']}")
    print(f"query precision {report['query_precision']} recall {report['query_recall']}")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="score a saved map against ground truth")
    parser.add_argument("map", type=Path, help="saved semantic map (.npz)")
    parser.add_argument("scene", type=Path, help="synthetic, ScanNet or Replica scene directory")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "synthetic", "scannet", "replica"]
    )
    parser.add_argument(
        "--vocabulary", default=None, help="ScanNet/Replica class list (default scannet200 / file)"
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML with the sections above")
    parser.set_defaults(func=_run)
