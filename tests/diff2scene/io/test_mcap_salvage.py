"""Recovering damaged MCAP files: cut short, a corrupt chunk, not MCAP at all."""

import struct
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

from diff2scene.errors import DataFormatError
from diff2scene.io.mcap_salvage import find_mcap_file, salvage_mcap

STORE = get_typestore(Stores.ROS2_JAZZY)
#: Each message carries 300 kB, so rosbags closes a chunk (at 1 MiB) every 4 messages.
PAYLOAD_BYTES = 300_000
N_MESSAGES = 12


def _write(path: Path) -> None:
    """A compressed MCAP bag: /data (UInt8MultiArray, large) and /tick (String), alternating."""
    t = STORE.types
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        data = writer.add_connection("/data", "std_msgs/msg/UInt8MultiArray", typestore=STORE)
        tick = writer.add_connection("/tick", "std_msgs/msg/String", typestore=STORE)
        rng = np.random.default_rng(0)  # incompressible, so chunks stay ~1 MiB on disk
        layout = t["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        for i in range(N_MESSAGES):
            payload = rng.integers(0, 256, PAYLOAD_BYTES, dtype=np.uint8)
            msg = t["std_msgs/msg/UInt8MultiArray"](layout=layout, data=payload)
            stamp = (i + 1) * 1_000_000
            writer.write(data, stamp, STORE.serialize_cdr(msg, data.msgtype))
            text = t["std_msgs/msg/String"](data=f"tick {i}")
            writer.write(tick, stamp, STORE.serialize_cdr(text, tick.msgtype))


def _read(path: Path) -> list[tuple[str, int, object]]:
    with AnyReader([path], default_typestore=STORE) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def _chunk_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each top-level chunk record (opcode 0x06)."""
    pos, out = 8, []
    while pos + 9 <= len(data):
        op = data[pos]
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        if op == 0x06:
            out.append((pos, length))
        if op == 0x02:
            break
        pos += 9 + length
    return out


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    path = tmp_path / "bag"
    _write(path)
    return path


def test_a_complete_file_is_copied_whole(bag: Path, tmp_path: Path) -> None:
    (mcap,) = bag.glob("*.mcap")
    assert find_mcap_file(bag) == mcap and find_mcap_file(mcap) == mcap
    report = salvage_mcap(mcap, tmp_path / "copy")
    assert report.complete and report.stopped_by == "footer"
    assert report.per_topic == {"/data": N_MESSAGES, "/tick": N_MESSAGES}
    original, copy = _read(bag), _read(tmp_path / "copy")
    assert [(t, s) for t, s, _ in copy] == [(t, s) for t, s, _ in original]
    assert [m.data for t, _, m in copy if t == "/tick"] == [f"tick {i}" for i in range(12)]


def test_a_file_cut_short_keeps_its_complete_chunks(bag: Path, tmp_path: Path) -> None:
    (mcap,) = bag.glob("*.mcap")
    data = mcap.read_bytes()
    chunks = _chunk_offsets(data)
    assert len(chunks) >= 3
    start, length = chunks[2]
    mcap.write_bytes(data[: start + length // 2])  # cut inside the third chunk
    with pytest.raises(DataFormatError, match="cannot open"):
        from diff2scene.io.bag import BagFrameSource

        BagFrameSource(bag).topics()
    report = salvage_mcap(mcap, tmp_path / "rescued")
    assert not report.complete and "truncated" in report.stopped_by
    assert report.readable_bytes == start  # everything before the cut chunk
    messages = _read(tmp_path / "rescued")
    ticks = [m.data for t, _, m in messages if t == "/tick"]
    assert ticks == [f"tick {i}" for i in range(len(ticks))] and 0 < len(ticks) < N_MESSAGES
    assert report.messages_written == len(messages)
    assert "truncated" in report.describe() and str(mcap) in report.describe()


def test_a_corrupt_chunk_is_dropped_and_the_rest_kept(bag: Path, tmp_path: Path) -> None:
    (mcap,) = bag.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    start, _ = _chunk_offsets(bytes(data))[0]
    # rosbags writes no chunk CRC, so break the zstd frame itself: its magic number starts
    # 44 bytes into the chunk (times, sizes, CRC, "zstd", compressed length).
    frame = start + 9 + 44
    assert bytes(data[frame : frame + 4]) == b"\x28\xb5\x2f\xfd"
    data[frame : frame + 4] = bytes(4)
    mcap.write_bytes(bytes(data))
    report = salvage_mcap(mcap, tmp_path / "rescued")
    assert report.chunks_dropped == 1 and report.stopped_by == "footer"
    ticks = [m.data for t, _, m in _read(tmp_path / "rescued") if t == "/tick"]
    assert ticks and ticks[-1] == f"tick {N_MESSAGES - 1}" and "tick 0" not in ticks
    assert "1 corrupt chunk(s) dropped" in report.describe()


def test_not_an_mcap_file_or_nothing_readable_is_an_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.mcap"
    text.write_text("not a bag")
    with pytest.raises(DataFormatError, match="not an MCAP file"):
        salvage_mcap(text, tmp_path / "out")
    header_only = tmp_path / "header.mcap"
    header_only.write_bytes(b"\x89MCAP0\r\n" + b"\x01" + struct.pack("<Q", 100) + b"x" * 10)
    with pytest.raises(DataFormatError, match="nothing readable"):
        salvage_mcap(header_only, tmp_path / "out")
    assert not (tmp_path / "out").exists()
