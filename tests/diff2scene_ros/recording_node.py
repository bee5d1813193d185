"""The real mapping node in its own process, recording each frame it hands to the pipeline.

``python -m tests.diff2scene_ros.recording_node OUT_DIR MAX_LIFETIME_S [--ros-args ...]``

Every frame the node's worker passes to ``Pipeline.add_frame`` is written to
``OUT_DIR/frame_<index>.npz`` (stamp, intrinsics, pose, pixels), so a test can compare what the
live node assembled with what a bag replay assembles from the same messages. The node's
diagnostics are written to ``OUT_DIR/diagnostics.json`` every 0.2 s. The process exits when
``OUT_DIR/stop`` appears or after ``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor

from diff2scene.types import Frame
from diff2scene_ros.node import MappingNode, choose_dds_transport


def main() -> None:
    out = Path(sys.argv[1])
    lifetime_s = float(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    choose_dds_transport()  # as the node's own main does
    rclpy.init(args=sys.argv)
    node = MappingNode()
    add_frame = node.runtime.pipeline.add_frame

    def recording_add_frame(frame: Frame) -> bool:
        k = frame.intrinsics
        tmp = out / f"frame_{frame.index:05d}.tmp.npz"
        np.savez(tmp, stamp_ns=frame.stamp_ns, rgb=frame.rgb, depth_m=frame.depth_m,
                 T_world_camera=frame.T_world_camera,
                 intrinsics=np.array([k.width, k.height, k.fx, k.fy, k.cx, k.cy]))
        tmp.rename(out / f"frame_{frame.index:05d}.npz")
        return add_frame(frame)

    node.runtime.pipeline.add_frame = recording_add_frame  # type: ignore[method-assign]
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + lifetime_s
    try:
        while time.monotonic() < deadline and not (out / "stop").exists():
            stats = node.diagnostics()
            tmp = out / "diagnostics.tmp.json"
            tmp.write_text(json.dumps(stats, default=str))
            tmp.rename(out / "diagnostics.json")
            time.sleep(0.2)
    finally:
        executor.shutdown()
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
