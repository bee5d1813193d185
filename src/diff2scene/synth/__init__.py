"""Synthetic indoor scenes rendered to RGB-D and written as ROS 2 bags with ground truth.

They stand in for ScanNet-style recordings, which this project cannot download, and come
with exact labels for evaluation:
:mod:`~diff2scene.synth.scene` builds a room, :mod:`~diff2scene.synth.floor` a building floor
of rooms along corridors (toured by :mod:`~diff2scene.synth.floor_route`),
:mod:`~diff2scene.synth.render` ray casts either along a camera path with a sensor-like
depth noise model, :mod:`~diff2scene.synth.bag` writes the frames as an MCAP bag and
:mod:`~diff2scene.synth.groundtruth` the instance/class/colour tables and the labelled point
cloud.
"""
