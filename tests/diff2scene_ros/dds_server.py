"""A TextQuery server run as its own process by test_interfaces_dds.py.

It answers from a fixed, tiny synthetic "map" so the test can check that every request field
reached the server and every response field came back intact across DDS (test_client.py uses
it as a stand-in node for the query client):
``python -m tests.diff2scene_ros.dds_server SERVICE_NAME MAX_LIFETIME_S``.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import numpy as np


class MapObject(NamedTuple):
    label: str
    score: float
    centroid_m: tuple[float, float, float]
    box_size_m: tuple[float, float, float]
    num_points: int


#: Ten points on the x axis with scores 0.0, 0.1, ... 0.9 and labels 0, 1, 2, 0, ...
MAP_POINTS_M = np.stack([np.arange(10) * 0.1, np.zeros(10), np.ones(10)], axis=1).astype(
    np.float32
)
MAP_SCORES = (np.arange(10) / 10).astype(np.float32)
MAP_LABELS = (np.arange(10) % 3).astype(np.uint32)
MAP_RGB = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)[MAP_LABELS]
#: The map's objects, best first.
MAP_OBJECTS = [
    MapObject("chair", 0.9, (1.0, 2.0, 0.4), (0.5, 0.5, 0.8), 40),
    MapObject("table", 0.7, (0.0, 1.0, 0.4), (1.2, 0.8, 0.75), 90),
    MapObject("lamp", 0.3, (2.0, 0.0, 1.5), (0.2, 0.2, 0.4), 7),
]


def main() -> None:
    import rclpy
    from diff2scene_interfaces.srv import TextQuery
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from diff2scene_ros import conversions as cv

    service_name, lifetime_s = sys.argv[1], float(sys.argv[2])

    def answer(req: TextQuery.Request, res: TextQuery.Response) -> TextQuery.Response:
        if req.query.startswith("slow:"):  # "slow:S" answers after S seconds (client timeouts)
            time.sleep(float(req.query.removeprefix("slow:")))
        if not req.query.strip():
            res.success, res.message = False, "empty query"
            return res
        keep = req.score_threshold <= MAP_SCORES
        res.points = cv.arrays_to_cloud(
            MAP_POINTS_M[keep], rgb=MAP_RGB[keep], labels=MAP_LABELS[keep],
            scores=MAP_SCORES[keep], frame_id="map", stamp_ns=123_000_000_456,
        )
        objects = [o for o in MAP_OBJECTS if o.score >= req.score_threshold]
        if req.top_k:
            objects = objects[: req.top_k]
        # echo the query into the labels so the test sees the request text arrived intact
        res.instances = cv.instances_to_msgs(
            [o._replace(label=f"{req.query}:{o.label}") for o in objects]
        )
        res.success, res.message = True, f"{int(keep.sum())} points, {len(objects)} instances"
        return res

    context = Context()
    rclpy.init(context=context)
    node = Node("dds_test_server", context=context)
    node.create_service(TextQuery, service_name, answer)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + lifetime_s  # never outlive a test that forgot us
    try:
        while context.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()


if __name__ == "__main__":
    main()
