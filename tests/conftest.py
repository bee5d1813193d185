"""Test-wide settings: small thread pools (CI has 2 cores) and no network for model hubs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
