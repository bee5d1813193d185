"""Dataset sequences (ScanNet, Replica) turned into the rosbag2 bags a robot would record.

A benchmark replays bags, so a dataset enters the system once, at this boundary: each frame's
colour, depth and pose files become the messages a camera driver and a localiser publish
(JPEG colour, ``compressedDepth`` PNG depth, CameraInfo, the pose on ``/tf``), and the
dataset's ground truth is linked beside the bag where the evaluation looks for it. A replay
then reads an imported bag exactly as it reads a recording, with no topic configuration.

:mod:`~diff2scene.datasets.sequence` holds what every dataset shares (frame selection,
stamps, colour registration, the bag and the ground-truth links);
:mod:`~diff2scene.datasets.scannet` and :mod:`~diff2scene.datasets.replica` read one layout
each; :mod:`~diff2scene.datasets.cli` is ``diff2scene import``. A new dataset is one reader
module and one line in the command's table.
"""
