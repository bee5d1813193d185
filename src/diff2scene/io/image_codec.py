"""Decoding of ``sensor_msgs/Image`` payloads into NumPy arrays.

Works on the message's plain fields so the same code serves rosbags messages (offline) and
rclpy messages (live) without importing either.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from diff2scene.errors import InputError

#: encoding -> (dtype, channels, channel order to reach RGB)
COLOR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
}
DEPTH_ENCODINGS: dict[str, np.dtype[np.generic]] = {
    "16UC1": np.dtype(np.uint16),
    "mono16": np.dtype(np.uint16),
    "32FC1": np.dtype(np.float32),
}


def _rows(
    data: bytes | bytearray | memoryview | NDArray[np.uint8],
    *,
    height: int,
    width: int,
    step: int,
    pixel_bytes: int,
) -> NDArray[np.uint8]:
    """(height, width * pixel_bytes) uint8 view of the payload with row padding removed."""
    if height <= 0 or width <= 0:
        raise InputError("bad_image_size", f"{width}x{height}")
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise InputError("bad_image_step", f"step {step} < width*pixel size {row_bytes}")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    buf = buf.reshape(-1)
    if buf.size < step * (height - 1) + row_bytes:
        raise InputError("truncated_image", f"{buf.size} bytes for {height} rows of step {step}")
    if buf.size < step * height:  # the last row may lack its padding
        buf = np.concatenate([buf, np.zeros(step * height - buf.size, np.uint8)])
    return buf[: step * height].reshape(height, step)[:, :row_bytes]


def decode_color(
    data: bytes | bytearray | memoryview | NDArray[np.uint8],
    *,
    height: int,
    width: int,
    step: int,
    encoding: str,
) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB from an rgb8/bgr8/rgba8/bgra8 image."""
    if encoding not in COLOR_ENCODINGS:
        raise InputError("bad_color_encoding", f"{encoding!r} not in {sorted(COLOR_ENCODINGS)}")
    channels, order = COLOR_ENCODINGS[encoding]
    rows = _rows(data, height=height, width=width, step=step, pixel_bytes=channels)
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def decode_depth(
    data: bytes | bytearray | memoryview | NDArray[np.uint8],
    *,
    height: int,
    width: int,
    step: int,
    encoding: str,
    is_bigendian: bool = False,
) -> tuple[NDArray[np.float32], int]:
    """(H, W) float32 depth in metres, 0 where invalid, and the count of non-finite pixels.

    16UC1 is millimetres (REP-118); 32FC1 is metres. NaN/inf/negative become 0 (invalid):
    sensors mark holes that way, so this is data, not an error — the caller decides whether a
    frame with too few valid pixels is usable.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise InputError("bad_depth_encoding", f"{encoding!r} not in {sorted(DEPTH_ENCODINGS)}")
    dtype = DEPTH_ENCODINGS[encoding].newbyteorder(">" if is_bigendian else "<")
    rows = _rows(data, height=height, width=width, step=step, pixel_bytes=dtype.itemsize)
    raw = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
    if dtype.kind == "u":
        return raw.astype(np.float32) * np.float32(0.001), 0
    depth = raw.astype(np.float32)
    bad = ~np.isfinite(depth)
    n_bad = int(bad.sum())
    depth[bad | (depth < 0)] = 0.0
    return depth, n_bad


def decode_int_image(
    data: bytes | bytearray | memoryview | NDArray[np.uint8],
    *,
    height: int,
    width: int,
    step: int,
    encoding: str,
) -> NDArray[np.int32]:
    """(H, W) int32 label image from 32SC1 / 16UC1 / mono16 / mono8 (instance ids)."""
    dtypes = {"32SC1": np.int32, "16UC1": np.uint16, "mono16": np.uint16, "mono8": np.uint8}
    if encoding not in dtypes:
        raise InputError("bad_label_encoding", f"{encoding!r} not in {sorted(dtypes)}")
    dtype = np.dtype(dtypes[encoding])
    rows = _rows(data, height=height, width=width, step=step, pixel_bytes=dtype.itemsize)
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width).astype(np.int32)
