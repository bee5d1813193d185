"""Synthetic indoor scenes rendered to RGB-D and written as ROS 2 bags with ground truth.

This is the stand-in for ScanNet-style data that cannot be downloaded here (DESIGN §5):
:mod:`~diff2scene.synth.scene` builds a room, :mod:`~diff2scene.synth.render` ray casts it
along a camera path with a sensor-like depth noise model, :mod:`~diff2scene.synth.bag` writes
the frames as an MCAP bag and :mod:`~diff2scene.synth.groundtruth` the instance/class/colour
tables and the labelled point cloud.
"""
