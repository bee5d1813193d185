"""Query answers as ``vision_msgs/Detection3DArray``, the type planners and rviz already read.

``TextQuery`` responses and the query markers are diff2scene's own; Nav2, MoveIt and rviz's
vision_msgs displays consume ``Detection3DArray``. Each instance of an answer becomes one
``Detection3D``: its class and score in ``results[0].hypothesis``, its centroid as the
hypothesis pose and box centre, its axis-aligned box (map axes, so identity orientation) in
``bbox``. Detections are built from the same ``diff2scene_interfaces/Instance`` messages the
service returns, so both carry bit-identical numbers.

Where no ``vision_msgs`` is installed (the PyPI wheels), ``make setup`` builds a package with the
same definitions from ros2_ws/compat.
"""

from __future__ import annotations

from collections.abc import Sequence

from diff2scene_interfaces.msg import Instance
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

from diff2scene.io.output_layout import detection_contents
from diff2scene_ros.conversions import (
    InstanceLike,
    instance_msg_contents,
    instances_to_msgs,
    make_header,
)


def instances_to_detections(
    instances: Sequence[InstanceLike], *, frame_id: str, stamp_ns: int
) -> Detection3DArray:
    """One ``Detection3D`` per query instance, in answer order, all in ``frame_id``.

    ``frame_id`` is the map frame the instances' centroids and boxes are expressed in;
    ``stamp_ns`` the time the answer refers to. Bad instances (non-finite centroid, negative
    box) raise ``InputError("bad_instance", ...)`` like :func:`instances_to_msgs`.
    """
    return instance_msgs_to_detections(
        instances_to_msgs(instances), frame_id=frame_id, stamp_ns=stamp_ns
    )


def instance_msgs_to_detections(
    instances: Sequence[Instance], *, frame_id: str, stamp_ns: int
) -> Detection3DArray:
    """:func:`instances_to_detections` for the ``Instance`` messages of a ``TextQuery`` response.

    A publisher that already filled the response passes ``response.instances`` here, so the
    detections repeat exactly what the service answered. The content is the core's
    (:func:`~diff2scene.io.output_layout.detection_contents`, which rejects non-finite values
    and negative boxes).
    """
    header = make_header(frame_id, stamp_ns)
    out = Detection3DArray(header=header)
    for d in detection_contents(instance_msg_contents(instances)):
        (px, py, pz), (qx, qy, qz, qw) = d.position_m, d.orientation_xyzw
        centre = Pose(position=Point(x=px, y=py, z=pz),
                      orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))  # fmt: skip
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = d.class_id
        hypothesis.hypothesis.score = d.score
        hypothesis.pose.pose = centre
        detection = Detection3D(header=header, results=[hypothesis])
        detection.bbox.center = centre
        detection.bbox.size = Vector3(x=d.size_m[0], y=d.size_m[1], z=d.size_m[2])
        # ``id`` is for trackers (the same object across messages); answers to different
        # queries are not tracked, so it stays empty as the message definition allows.
        out.detections.append(detection)
    return out
