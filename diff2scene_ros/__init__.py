"""The ROS 2 layer of diff2scene: message conversions and the mapping node.

Everything that touches ``rclpy`` or message packages lives here; the algorithm lives in the
ROS-free core package :mod:`diff2scene`. Importing this package needs the ROS 2 Jazzy Python
packages and the built ``diff2scene_interfaces`` on ``PYTHONPATH``.
"""
