"""The diffusion segmenter takes read-only arrays without a warning and with the same results.

The node and the bag replay hand it read-only arrays: images decoded from message buffers, and
the mask embeddings of a map snapshot when a vocabulary is scored. ``torch.from_numpy`` of such
an array warns (the tensor would share memory that must not be written), once per process — so
the check runs in a fresh interpreter, where no earlier test can have used up that one warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.ros import REPO

#: Segments and classifies one frame twice, from writable and from read-only arrays; prints
#: the warnings raised from our sources and whether both runs agree.
SCRIPT = r"""
import json, sys, warnings
import numpy as np

our_roots = sys.argv[1:]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from diff2scene.segmentation.base import Vocabulary
    from diff2scene.segmentation.factory import SegmenterConfig, build_segmenter
    from diff2scene.types import CameraIntrinsics, Frame

    segmenter, encoder = build_segmenter(SegmenterConfig(kind="diffusion", profile="tiny"))
    names = ["chair", "table", "lamp"]

    def run(read_only):
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        text = encoder.encode(names)
        seen = np.array([True, False, True])
        for array in (rgb, text, seen):
            array.flags.writeable = not read_only
        frame = Frame(0, rgb, np.ones((48, 64), np.float32),
                      CameraIntrinsics(64, 48, 50.0, 50.0, 32.0, 24.0), np.eye(4))
        vocabulary = Vocabulary(names, text, seen)
        masks = segmenter.segment(frame, vocabulary)
        embeddings = {k: v.copy() for k, v in masks.embeddings.items()}
        for array in embeddings.values():
            array.flags.writeable = not read_only
        return masks, segmenter.classify(embeddings, vocabulary)

    writable, writable_probs = run(read_only=False)
    read_only, read_only_probs = run(read_only=True)

ours = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught
        if any(w.filename.startswith(root) for root in our_roots)]
same = (np.array_equal(writable.masks, read_only.masks)
        and np.array_equal(writable.class_probs, read_only.class_probs)
        and np.array_equal(writable_probs, read_only_probs)
        and writable.masks.shape[0] > 0)
print(json.dumps({"warnings": ours, "same": bool(same)}))
"""


def test_read_only_inputs_raise_no_warning_from_our_code() -> None:
    roots = [str(REPO / "src" / "diff2scene"), str(REPO / "diff2scene_ros")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT, *roots], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["warnings"] == []
    assert report["same"], "read-only inputs gave other masks or class probabilities"
