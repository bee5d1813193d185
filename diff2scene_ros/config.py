"""The node's configuration: the core runtime's, plus what only a ROS node has.

Kept apart from the node so that the parameter tools (:mod:`diff2scene_ros.params`, the API
page, ``diff2scene bringup``) read it without importing the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from diff2scene.errors import ConfigError
from diff2scene.runtime import RuntimeConfig


@dataclass
class NodeConfig(RuntimeConfig):
    """Every parameter of the node: the runtime's (shared with ``diff2scene replay``, same
    names and defaults) and the node's own, below."""

    #: Reliability of the image, calibration and pose subscriptions. "reliable" by default:
    #: measured here (bench/dds_input.py), best-effort subscribers lost up to half of the
    #: large image messages over Fast DDS on one machine while reliable ones lost none. A
    #: publisher that only offers best effort (some camera drivers) needs "sensor_data": the
    #: node reports the incompatibility in /diagnostics and the log.
    input_qos: Literal["reliable", "sensor_data"] = "reliable"
    #: Images each input subscription holds for the node at most (DDS reader history): room
    #: for a pause of the node's Python threads (measured in the soak: up to 1.7 s about 10 s
    #: after a map load) without losing camera frames — 30 covers 1 s of a 30 Hz camera.
    image_queue_depth: int = 30
    #: Colour transport: "raw" (sensor_msgs/Image) or "compressed" (image_transport,
    #: ``<colour topic>/compressed``, JPEG or PNG).
    color_transport: Literal["raw", "compressed"] = "raw"
    #: Depth transport: "raw" or "compressedDepth" (image_transport, ``<depth
    #: topic>/compressedDepth``, PNG or RVL).
    depth_transport: Literal["raw", "compressedDepth"] = "raw"
    #: Period of ``~/labelled_cloud``, in seconds.
    cloud_period_s: float = 2.0
    #: At most this many points go into one labelled cloud (evenly subsampled beyond).
    max_cloud_points: int = 500_000
    #: Period of ``/diagnostics``, in seconds.
    diagnostics_period_s: float = 1.0
    #: The only directory ``~/save_map`` and ``~/load_map`` read and write (created if
    #: missing): request paths are taken relative to it, and paths leaving it are refused.
    map_dir: str = "~/.ros/diff2scene/maps"
    #: Map file (inside ``map_dir``) that ``~/save_map`` writes when its request has no path.
    default_map_name: str = "map.npz"
    #: Map file (inside ``map_dir``) saved atomically when the node shuts down (SIGINT,
    #: SIGTERM); empty = no autosave.
    autosave_path: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in {"cloud_period_s": self.cloud_period_s,
                            "diagnostics_period_s": self.diagnostics_period_s}.items():
            if not value > 0:
                raise ConfigError(f"NodeConfig.{name} must be > 0, got {value}")
        if self.max_cloud_points < 1 or self.image_queue_depth < 1:
            raise ConfigError("NodeConfig: max_cloud_points, image_queue_depth must be >= 1")
