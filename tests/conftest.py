"""Test-wide settings: one torch thread and no network for model hubs.

One intra-op thread on purpose: the tests' tensors are tiny, and on a 2-core machine with
anything else running, torch's spinning worker threads made the tiny-model tests 10-70x slower
(the 640x480 diffusion-segmenter test: 131 s with 2 threads, 1.8 s with 1).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(1)
