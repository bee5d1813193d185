"""docs/ros_api.md is what the running node and its declarations say."""

from __future__ import annotations

import pytest

pytest.importorskip("tf2_msgs", reason="the workspace is not built: run `make setup`")

from diff2scene_ros.api_doc import DEFAULT_OUT, node_interfaces, render

pytestmark = pytest.mark.ros


def test_committed_api_page_matches_the_node() -> None:
    interfaces = node_interfaces()
    assert ("/diff2scene/text_query", "diff2scene_interfaces/srv/TextQuery") in interfaces[
        "services"]
    assert ("/tf", "tf2_msgs/msg/TFMessage") in interfaces["subscriptions"]
    assert ("/diff2scene/detections", "vision_msgs/msg/Detection3DArray") in interfaces[
        "publishers"]
    assert DEFAULT_OUT.read_text() == render(interfaces), (
        "docs/ros_api.md is stale: run python -m diff2scene_ros.api_doc"
    )
