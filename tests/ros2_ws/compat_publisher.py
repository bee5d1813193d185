"""Publishes a TFMessage and a Detection3DArray until killed; run by test_compat_msgs.py.

``python -m tests.ros2_ws.compat_publisher TOPIC_PREFIX MAX_LIFETIME_S``: the two messages carry
the fixed values of :func:`tf_message` and :func:`detections`, so the test can compare every
field that crossed DDS.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def tf_message() -> Any:
    """map→odom (static-like) and odom→base_link, stamped 12.5 s."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    out = TFMessage()
    for parent, child, x_m in (("map", "odom", 1.5), ("odom", "base_link", -0.25)):
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = parent, child
        t.header.stamp.sec, t.header.stamp.nanosec = 12, 500_000_000
        t.transform.translation.x = x_m
        t.transform.rotation.z, t.transform.rotation.w = 0.6, 0.8
        out.transforms.append(t)
    return out


def detections() -> Any:
    """One chair detection with a 0.5 × 0.5 × 0.8 m box at (1, 2, 0.4) in ``map``."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    out = Detection3DArray()
    out.header.frame_id = "map"
    det = Detection3D()
    det.header.frame_id = "map"
    det.id = "0"
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = "chair", 0.9
    hyp.pose.pose.position.x, hyp.pose.pose.position.y, hyp.pose.pose.position.z = 1.0, 2.0, 0.4
    det.results.append(hyp)
    det.bbox.center.position.x, det.bbox.center.position.y = 1.0, 2.0
    det.bbox.center.position.z = 0.4
    det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = 0.5, 0.5, 0.8
    out.detections.append(det)
    return out


def main() -> None:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from tf2_msgs.msg import TFMessage
    from vision_msgs.msg import Detection3DArray

    prefix, lifetime_s = sys.argv[1], float(sys.argv[2])
    context = Context()
    rclpy.init(context=context)
    node = Node("compat_publisher", context=context)
    tf_pub = node.create_publisher(TFMessage, f"{prefix}/tf", 10)
    det_pub = node.create_publisher(Detection3DArray, f"{prefix}/detections", 10)
    tf_msg, det_msg = tf_message(), detections()

    def publish() -> None:
        tf_pub.publish(tf_msg)
        det_pub.publish(det_msg)

    node.create_timer(0.1, publish)
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
