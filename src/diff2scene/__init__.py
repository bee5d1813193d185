"""diff2scene: open-vocabulary 3D semantic mapping (Diff2Scene, ECCV 2024).

The package root and every subpackage except :mod:`diff2scene_ros` are ROS-free, so the same
code runs live, in bag replay, in training and in evaluation.
"""

__version__ = "0.1.0"
