"""Recover the readable part of a damaged MCAP file into a new rosbag2 bag.

A recording cut short (robot powered off, disk full, ``ros2 bag record`` killed) leaves an
MCAP file without its summary and footer. ``rosbags`` refuses such a file outright ("File end
magic is invalid"), although every chunk written before the cut is intact. The MCAP layout
makes recovery straightforward: after the 8-byte magic the file is a sequence of records, each
``opcode (u8) | length (u64 LE) | content``; chunks hold compressed runs of such records and
may carry a CRC of their uncompressed content (rosbags writes none). :func:`salvage_mcap`
walks the records in file order, one record in memory at a time, keeps schemas, channels and
messages from every complete record, skips (and counts) chunks that fail to decompress or
check, and stops at the first record that runs past the end of the file. A first, cheap pass
reads the schemas and channels outside chunks (a complete file repeats them all in its summary),
so messages stay readable when the chunk that first declared their channel is the corrupt one.
The messages are written, in the order read, to a fresh rosbag2 MCAP bag with ``rosbags``, so
every reader (the frame source included) reads them as from any bag.

Only the records a replay needs are interpreted (schema 0x03, channel 0x04, message 0x05,
chunk 0x06, footer 0x02); indexes, statistics, attachments and metadata are skipped, they are
rebuilt by the writer.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from diff2scene.errors import DataFormatError

__all__ = ["SalvageReport", "find_mcap_file", "salvage_mcap"]

MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER = 0x02
_OP_SCHEMA = 0x03
_OP_CHANNEL = 0x04
_OP_MESSAGE = 0x05
_OP_CHUNK = 0x06


@dataclass
class SalvageReport:
    """What :func:`salvage_mcap` recovered and what it had to leave out."""

    source: Path
    output: Path
    file_bytes: int
    #: Bytes of the file read as complete records before the scan stopped.
    readable_bytes: int
    #: Why the scan stopped: "footer" (the file is complete) or what was wrong there.
    stopped_by: str
    messages_written: int = 0
    #: Messages written per topic.
    per_topic: dict[str, int] = field(default_factory=dict)
    #: Chunks dropped because they did not decompress or their CRC failed.
    chunks_dropped: int = 0
    #: Messages left out, by reason (e.g. "unknown_channel", "unknown_type:<type>").
    messages_dropped: Counter[str] = field(default_factory=Counter)
    #: Newest log time (ns) among the messages written; 0 if none.
    last_log_time_ns: int = 0

    @property
    def complete(self) -> bool:
        """The file ended with its footer and nothing was dropped."""
        return (
            self.stopped_by == "footer"
            and not self.chunks_dropped
            and not sum(self.messages_dropped.values())
        )

    def describe(self) -> str:
        """One paragraph for a report: what was damaged and what was recovered."""
        parts = [
            f"{self.source}: read {self.readable_bytes} of {self.file_bytes} bytes as complete "
            f"records ({self.stopped_by}); {self.messages_written} message(s) recovered into "
            f"{self.output}"
        ]
        if self.chunks_dropped:
            parts.append(f"{self.chunks_dropped} corrupt chunk(s) dropped")
        for reason, count in sorted(self.messages_dropped.items()):
            parts.append(f"{count} message(s) left out ({reason})")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Schema:
    name: str
    encoding: str
    data: str


@dataclass(frozen=True)
class _Channel:
    topic: str
    schema_id: int
    message_encoding: str


class _TruncatedError(Exception):
    """A record runs past the end of the data it was read from."""


class _Cursor:
    """Little-endian reads over a bytes buffer; :class:`_TruncatedError` past its end."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _TruncatedError(f"needs {n} bytes at offset {self.pos}, {len(self.data)} in all")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> str:
        return bytes(self.take(self.u32())).decode("utf-8", errors="replace")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _records(cur: _Cursor) -> Iterator[tuple[int, memoryview, int]]:
    """(opcode, content, offset after the record) of each complete record, in order."""
    while cur.left:
        op = cur.u8()
        length = cur.u64()
        content = cur.take(length)
        yield op, content, cur.pos


def _file_records(
    f: BinaryIO, size: int, *, keep: tuple[int, ...] | None = None
) -> Iterator[tuple[int, bytes | None, int]]:
    """(opcode, content, file offset after the record) of each complete record of ``f`` from
    its current position. Records whose opcode is not in ``keep`` (None: all are kept) are
    skipped without reading (content None). One record in memory at a time."""
    pos = f.tell()
    while pos < size:
        head = f.read(9)
        if len(head) < 9:
            raise _TruncatedError(f"record header at byte {pos}")
        op = head[0]
        (length,) = struct.unpack("<Q", head[1:])
        end = pos + 9 + length
        if end > size:
            raise _TruncatedError(f"record at byte {pos} ends at {end}, the file at {size}")
        if keep is not None and op not in keep:
            f.seek(length, 1)
            yield op, None, end
        else:
            content = f.read(length)
            if len(content) < length:
                raise _TruncatedError(f"record at byte {pos}")
            yield op, content, end
        pos = end


def _decompress(compression: str, data: memoryview) -> bytes:
    if compression == "":
        return bytes(data)
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
        except ImportError:
            from backports import zstd
        return bytes(zstd.decompress(bytes(data)))
    if compression == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(bytes(data)))
    raise DataFormatError(f"unknown MCAP chunk compression {compression!r}")


def _chunk_records(content: memoryview) -> bytes:
    """The uncompressed records of a chunk record; ValueError if they do not check."""
    cur = _Cursor(content)
    cur.u64()  # message start time
    cur.u64()  # message end time
    size = cur.u64()
    crc = cur.u32()
    compression = cur.string()
    payload = cur.take(cur.u64())
    try:
        data = _decompress(compression, payload)
    except DataFormatError:
        raise
    except Exception as exc:  # lz4/zstd raise their own error types for corrupt data
        raise ValueError(f"chunk does not decompress: {exc}") from exc
    if len(data) != size:
        raise ValueError(f"chunk holds {len(data)} bytes, its header says {size}")
    if crc and zlib.crc32(data) != crc:
        raise ValueError("chunk CRC mismatch")
    return data


def find_mcap_file(bag: Path) -> Path | None:
    """The MCAP file of a bag given as a directory or a file; None if it has none (or
    several, which a plain recording never has)."""
    if bag.is_file():
        return bag if bag.suffix == ".mcap" else None
    files = sorted(bag.glob("*.mcap"))
    return files[0] if len(files) == 1 else None


def salvage_mcap(source: str | Path, output: str | Path) -> SalvageReport:
    """Copy every readable message of the MCAP file ``source`` into the new bag ``output``.

    Raises :class:`DataFormatError` when ``source`` is not an MCAP file (bad magic), when
    ``output`` exists, or when not a single message could be recovered.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    source, output = Path(source), Path(output)
    with source.open("rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise DataFormatError(
                f"{source} is not an MCAP file (its first bytes are not the magic)"
            )
    if output.exists():
        raise DataFormatError(f"{output} exists already; not overwriting it")
    size = source.stat().st_size
    report = SalvageReport(source, output, size, len(MAGIC), "end of file")
    typestore = get_typestore(Stores.ROS2_JAZZY)
    schemas: dict[int, _Schema] = {}
    channels: dict[int, _Channel] = {}
    connections: dict[int, Any] = {}
    unwritable: dict[int, str] = {}
    writer = Writer(output, version=9, storage_plugin=StoragePlugin.MCAP)

    def connection(channel_id: int) -> Any:
        """The output connection of a channel, created on its first message; None if the
        channel cannot be written (reason in ``unwritable``)."""
        if channel_id in connections or channel_id in unwritable:
            return connections.get(channel_id)
        channel = channels.get(channel_id)
        if channel is None:
            unwritable[channel_id] = "unknown_channel"
            return None
        schema = schemas.get(channel.schema_id)
        if schema is None or channel.message_encoding != "cdr":
            unwritable[channel_id] = f"no_ros2_schema:{channel.topic}"
            return None
        if schema.name not in typestore.types:
            try:
                typestore.register(get_types_from_msg(schema.data, schema.name))
            except Exception:  # a definition rosbags cannot parse: leave the topic out
                unwritable[channel_id] = f"unknown_type:{schema.name}"
                return None
        connections[channel_id] = writer.add_connection(
            channel.topic, schema.name, typestore=typestore
        )
        return connections[channel_id]

    def take(op: int, content: memoryview) -> None:
        cur = _Cursor(content)
        if op == _OP_SCHEMA:
            key = cur.u16()
            name, encoding = cur.string(), cur.string()
            schemas[key] = _Schema(name, encoding, bytes(cur.take(cur.u32())).decode())
        elif op == _OP_CHANNEL:
            key, schema_id = cur.u16(), cur.u16()
            channels[key] = _Channel(cur.string(), schema_id, cur.string())
        elif op == _OP_MESSAGE:
            channel_id = cur.u16()
            cur.u32()  # sequence
            log_time_ns = cur.u64()
            cur.u64()  # publish time
            conn = connection(channel_id)
            if conn is None:
                report.messages_dropped[unwritable[channel_id]] += 1
                return
            writer.write(conn, log_time_ns, bytes(cur.take(cur.left)))
            report.messages_written += 1
            report.per_topic[conn.topic] = report.per_topic.get(conn.topic, 0) + 1
            report.last_log_time_ns = max(report.last_log_time_ns, log_time_ns)

    def take_checked(op: int, content: memoryview) -> None:
        try:
            take(op, content)
        except _TruncatedError:  # a record shorter than its own fields say
            report.messages_dropped["malformed_record"] += 1

    # Pass 1, cheap (chunks are skipped, not read): the schemas and channels outside chunks.
    # A complete file repeats all of them in its summary section, so the messages of later
    # chunks stay readable when the chunk that first declared their channel is corrupt.
    with source.open("rb") as f:
        f.seek(len(MAGIC))
        try:
            for op, content, _ in _file_records(f, size, keep=(_OP_SCHEMA, _OP_CHANNEL)):
                if op == _OP_FOOTER:
                    break
                if content is not None:
                    take_checked(op, memoryview(content))
        except _TruncatedError:
            pass  # pass 2 says where
    # Pass 2: every message, in file order.
    with writer, source.open("rb") as f:
        f.seek(len(MAGIC))
        records = _file_records(f, size)
        while True:
            try:
                op, content, end = next(records)
            except StopIteration:
                break
            except _TruncatedError:
                report.stopped_by = (
                    f"truncated: the record at byte {report.readable_bytes} runs past the end "
                    "of the file"
                )
                break
            assert content is not None
            if op == _OP_FOOTER:
                report.stopped_by = "footer"
                report.readable_bytes = end
                break
            if op == _OP_CHUNK:
                try:
                    chunk = list(_records(_Cursor(_chunk_records(memoryview(content)))))
                except (ValueError, _TruncatedError):
                    report.chunks_dropped += 1
                else:
                    for inner_op, inner_content, _ in chunk:
                        take_checked(inner_op, inner_content)
            else:
                take_checked(op, memoryview(content))
            report.readable_bytes = end
    if report.messages_written == 0:
        _remove_bag(output)
        raise DataFormatError(f"nothing readable in {source}: {report.describe()}")
    return report


def _remove_bag(path: Path) -> None:
    """Delete an (empty) bag this module wrote: its metadata and storage file only."""
    for child in path.iterdir():
        if child.name == "metadata.yaml" or child.suffix == ".mcap":
            child.unlink()
    path.rmdir()
