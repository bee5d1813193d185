"""``sensor_msgs/CompressedImage`` payloads as robots record them, decoded to arrays (and back).

People record RGB-D through image_transport because raw 640×480 RGB-D at 30 Hz is ~55 MB/s.
Two plugins matter, and this module reads (and, for tests and synthetic bags, writes) exactly
what they put on the wire. It works on the message's plain fields (``format``, ``data``) so the
bag replay and the live node share it without importing ROS.

``compressed`` (colour), ``format`` = ``"<encoding>; <codec> compressed <target>"``:
  the publisher converts a colour image to ``bgr8`` (JPEG) or ``bgr8``/``bgr16`` (PNG) and a
  grey one to ``mono8`` (JPEG) or leaves it as is (PNG, empty target), then OpenCV writes a
  standard JPEG/PNG — whose samples are therefore in true RGB order. A third-party publisher
  that names a non-``bgr`` target (``"rgb8; jpeg compressed rgb8"``) handed OpenCV an RGB buffer
  as if it were BGR, so its file holds the channels swapped; image_transport's subscriber
  swaps them back and so do we. Formats without ``;`` (``"jpeg"``, ``"png"``) come from old
  publishers that always wrote BGR buffers. Colour comes out as (H, W, 3) uint8 RGB; grey
  images are replicated to three channels, 16-bit samples keep their high byte.

``compressedDepth`` (depth), ``format`` = ``"<encoding>; compressedDepth <png|rvl>"``
(``"…; compressedDepth"`` alone is the older PNG-only form): the payload starts with a
12-byte little-endian config header — ``int32`` compression format (0 = inverse depth),
``float32`` depthQuantA, ``float32`` depthQuantB — followed by
  * PNG: a 16-bit single-channel PNG;
  * RVL: ``uint32`` cols, ``uint32`` rows, then the RVL stream (Wilson 2017): little-endian
    32-bit words, each read from its most significant nibble down; every value is a
    variable-length code of 3-bit groups, least significant group first, the nibble's high
    bit saying "more follows"; values come as (zero-run length, nonzero-run length, that many
    zigzag-coded deltas to the previous nonzero pixel), the previous value persisting across
    runs and starting at 0; the last word is padded with zero nibbles.
  ``16UC1``/``mono16`` payloads hold millimetres (values above the publisher's ``depth_max``
  were zeroed). ``32FC1`` payloads hold quantised inverse depth ``q = A / d + B`` (truncated
  to uint16, ``A = z0 (z0 + 1)``, ``B = 1 - A / depth_max``, defaults z0 = 100,
  depth_max = 10 m; ``q = 0`` means no depth), decoded as ``d = A / (q - B)``.

A 16-bit depth image sent through the colour plugin (``"16UC1; png compressed "``, a plain
16-bit PNG of millimetres) is read as depth too; a JPEG'd one is rejected (lossy depth).

Depth comes out as (H, W) float32 metres with 0 where there is no depth, plus the number of
pixels the transport marked invalid where the reference subscriber would hand out NaN (only
``32FC1``) — the same contract as :func:`diff2scene.io.image_codec.decode_depth`, so a
compressed recording and a raw one of the same frames give the same map.

Anything unusable raises :class:`~diff2scene.errors.InputError` (never another type) with
one of :data:`REASONS`, so a frame assembler counts it as a skip.

Decoder choice, measured by ``bench/decode.py`` (one 640×480 frame of the synthetic room
with sensor noise, JPEG q95 and compressedDepth as the plugins write them by default; median
and fastest of 60 interleaved decodes, one thread each, on this 2-core CPU at load average
~9 from other jobs; ``bench/results/decode.md``):

==========  ==========================  ==========================  =======================
payload     candidate                   median / fastest ms         verdict
==========  ==========================  ==========================  =======================
JPEG        simplejpeg 1.9              1.22 / 1.03                 used (~1 MB installed,
                                                                    needs only numpy)
JPEG        OpenCV 5.0 (+ BGR→RGB)      1.66 / 1.40                 ~150 MB installed
JPEG        Pillow 13                   5.26 / 1.79                 slowest
PNG 16-bit  Pillow 13                   12.6 / 6.4                  used (already required)
PNG 16-bit  OpenCV 5.0 / pyspng 0.1.4   12.4 / 4.1,  12.1 / 4.1     zlib-bound like Pillow
RVL         NumPy (this module)         36.2 / 18.8                 used
RVL         numba 0.68 (reference loop) 6.2 / 1.8, after 3 s JIT    ~200 MB with llvmlite
==========  ==========================  ==========================  =======================

JPEG is every colour frame of a compressed recording, and simplejpeg (libjpeg-turbo, the same
pixels as Pillow and OpenCV) is the fastest for a 1 MB dependency. For PNG the candidates
share zlib and their medians agree; Pillow stays. None of the libraries compared decodes RVL,
so it is decoded here in NumPy: only the run headers (about 2,000 in the benchmark frame) are
walked in Python, all per-pixel work is vectorised. The comparison above weighed numba's
~200 MB compiler against its ~6× speed; numba has since become a dependency of the mapper's
kernels, so that cost is paid anyway and a compiled decoder (cached, no per-run compile) is
the better choice once it is written and measured against this one with ``bench/decode.py``.
"""

from __future__ import annotations

import array
import io
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg
from numpy.typing import NDArray
from PIL import Image

from diff2scene.errors import InputError

#: Every ``InputError.reason`` raised here.
UNSUPPORTED_FORMAT: Final = "unsupported_compressed_format"
CORRUPT_IMAGE: Final = "corrupt_compressed_image"
CORRUPT_DEPTH: Final = "corrupt_compressed_depth"
DEPTH_SIZE_MISMATCH: Final = "compressed_depth_size_mismatch"
REASONS: Final = (UNSUPPORTED_FORMAT, CORRUPT_IMAGE, CORRUPT_DEPTH, DEPTH_SIZE_MISMATCH)

#: The compressedDepth config header: int32 compression format, float32 quantA, quantB.
CONFIG_HEADER: Final = struct.Struct("<iff")
#: compressionFormat::INV_DEPTH, the only value publishers write.
INV_DEPTH: Final = 0
#: The RVL size prefix after the config header: uint32 cols, uint32 rows.
RVL_SIZE: Final = struct.Struct("<II")
#: Largest image accepted (pixels): a corrupt size field must not allocate gigabytes.
MAX_PIXELS: Final = 1 << 26

#: ``sensor_msgs`` encodings image_transport treats as colour (``isColor``).
_COLOR_ENCODINGS: Final = frozenset(
    {"rgb8", "rgba8", "rgb16", "rgba16", "bgr8", "bgra8", "bgr16", "bgra16"}
)
#: compressedDepth source encodings: 16-bit millimetres or 32-bit float metres.
_DEPTH_MM_ENCODINGS: Final = frozenset({"16UC1", "mono16"})
_DEPTH_M_ENCODINGS: Final = frozenset({"32FC1"})
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
#: Longest RVL value, in nibbles: the reference decoder's shifts are only defined up to 10
#: three-bit groups (30 bits), far more than any run length or delta needs.
_RVL_MAX_NIBBLES: Final = 10

#: A message's ``data``: rosbags gives an ndarray, rclpy an ``array.array('B')``.
CompressedData = bytes | bytearray | memoryview | NDArray[np.uint8] | array.array  # type: ignore[type-arg]


@dataclass(frozen=True)
class CompressedFormat:
    """What a ``CompressedImage.format`` string says about its payload."""

    #: ``sensor_msgs/Image`` encoding before compression; "" when the publisher did not say.
    encoding: str
    #: "jpeg" or "png" (colour transport); "png" or "rvl" (compressedDepth).
    codec: str
    #: True for the compressedDepth transport.
    depth: bool
    #: Colour only: the file's samples are in true RGB order (False: swapped, see module doc).
    file_is_rgb: bool = True


def parse_compressed_format(format: str) -> CompressedFormat:
    """Parse a ``CompressedImage.format`` the way image_transport's subscribers read it.

    Raises ``InputError(unsupported_compressed_format)`` for codecs other than JPEG/PNG (colour)
    or PNG/RVL (compressedDepth), e.g. the ``tiff`` option of the compressed plugin.
    """
    text = format.strip()
    if ";" not in text:
        codec = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}.get(text.lower())
        if codec is None:
            raise InputError(UNSUPPORTED_FORMAT, f"format {format!r}: expected jpeg or png")
        return CompressedFormat(encoding="", codec=codec, depth=False)
    encoding, rest = (part.strip() for part in text.split(";", 1))
    words = rest.split()
    if words[:1] == ["compressedDepth"]:
        codec = words[1].lower() if len(words) > 1 else "png"  # the older PNG-only publisher
        if codec not in ("png", "rvl") or len(words) > 2:
            raise InputError(UNSUPPORTED_FORMAT, f"format {format!r}: compressedDepth is png/rvl")
        return CompressedFormat(encoding=encoding, codec=codec, depth=True)
    if len(words) < 2 or words[1] != "compressed" or len(words) > 3:
        raise InputError(UNSUPPORTED_FORMAT, f"format {format!r}: not '<enc>; <codec> compressed'")
    codec = {"jpeg": "jpeg", "png": "png"}.get(words[0].lower(), "")
    if not codec:
        raise InputError(UNSUPPORTED_FORMAT, f"format {format!r}: codec {words[0]!r} not jpeg/png")
    target = words[2] if len(words) == 3 else ""
    swapped = encoding in _COLOR_ENCODINGS and not target.startswith("bgr")
    return CompressedFormat(encoding=encoding, codec=codec, depth=False, file_is_rgb=not swapped)


def _as_bytes(data: CompressedData, reason: str) -> NDArray[np.uint8]:
    """Flat uint8 view of a message's ``data`` (bytes, rclpy array, rosbags ndarray)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InputError(reason, f"data has dtype {data.dtype}, expected uint8")
        return data.reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def _check_magic(payload: NDArray[np.uint8], codec: str, reason: str) -> bool:
    """True for JPEG content, False for PNG; ``InputError(reason)`` for anything else.

    image_transport decodes by content, not by the codec named in the format, so do we; but
    only JPEG and PNG content is accepted — anything else is not what these transports carry.
    """
    head = payload[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        return True
    if head.startswith(_PNG_MAGIC):
        return False
    shown = "empty payload" if not head else f"starts with {head.hex()}"
    raise InputError(reason, f"{codec} payload is neither JPEG nor PNG ({shown})")


def _check_size(width: int, height: int, codec: str, reason: str) -> None:
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise InputError(reason, f"{codec} payload reports {width}x{height} pixels")


def _open_image(payload: NDArray[np.uint8], codec: str, reason: str) -> Image.Image:
    """A fully decoded Pillow image of a JPEG/PNG payload, or ``InputError(reason)``."""
    try:
        image = Image.open(io.BytesIO(payload.tobytes()))
        _check_size(*image.size, codec, reason)
        image.load()
    except InputError:
        raise
    except Exception as exc:  # a third-party decoder on untrusted bytes may raise anything
        raise InputError(reason, f"{codec} payload of {payload.size} bytes: {exc!r}") from exc
    return image


def _jpeg_rgb(payload: NDArray[np.uint8], codec: str) -> NDArray[np.uint8] | None:
    """(H, W, 3) RGB of a YCbCr/RGB/grey JPEG through libjpeg-turbo; None for CMYK/YCCK."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(payload)
        _check_size(width, height, codec, CORRUPT_IMAGE)
        if colorspace not in ("YCbCr", "RGB", "Gray"):
            return None
        # strict: libjpeg's warnings (premature end of data, corrupt segments) are errors
        rgb = simplejpeg.decode_jpeg(payload, colorspace="RGB", strict=True)
    except InputError:
        raise
    except Exception as exc:  # a third-party decoder on untrusted bytes may raise anything
        detail = f"{codec} payload of {payload.size} bytes: {exc!r}"
        raise InputError(CORRUPT_IMAGE, detail) from exc
    return np.asarray(rgb, dtype=np.uint8)


def decode_compressed_color(format: str, data: CompressedData) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB from a ``compressed`` transport JPEG/PNG ``CompressedImage``."""
    fmt = parse_compressed_format(format)
    if fmt.depth:
        raise InputError(UNSUPPORTED_FORMAT, f"format {format!r} is depth, not colour")
    payload = _as_bytes(data, CORRUPT_IMAGE)
    is_jpeg = _check_magic(payload, fmt.codec, CORRUPT_IMAGE)
    rgb = _jpeg_rgb(payload, fmt.codec) if is_jpeg else None
    if rgb is None:
        rgb = _pillow_rgb(_open_image(payload, fmt.codec, CORRUPT_IMAGE))
    if not fmt.file_is_rgb:
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _pillow_rgb(image: Image.Image) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of any decoded PNG (or CMYK JPEG) mode."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode == "L":
        return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))  # RGBA, LA, palette, CMYK …


def _depth_png(payload: NDArray[np.uint8]) -> NDArray[np.uint16]:
    _check_magic(payload, "compressedDepth png", CORRUPT_DEPTH)
    image = _open_image(payload, "compressedDepth png", CORRUPT_DEPTH)
    if image.format != "PNG" or image.mode not in ("I;16", "I;16B", "I;16L"):
        raise InputError(
            CORRUPT_DEPTH,
            f"expected a 16-bit single-channel PNG, got {image.format} mode {image.mode}",
        )
    return np.asarray(image).astype(np.uint16, copy=False)


def _depth_rvl(payload: NDArray[np.uint8]) -> NDArray[np.uint16]:
    if payload.size < RVL_SIZE.size:
        raise InputError(CORRUPT_DEPTH, f"RVL payload of {payload.size} bytes has no size prefix")
    cols, rows = RVL_SIZE.unpack(payload[: RVL_SIZE.size].tobytes())
    if cols == 0 or rows == 0 or cols * rows > MAX_PIXELS:
        raise InputError(DEPTH_SIZE_MISMATCH, f"RVL size prefix says {cols}x{rows}")
    return rvl_decode(payload[RVL_SIZE.size :], cols * rows).reshape(rows, cols)


def decode_compressed_depth(
    format: str, data: CompressedData
) -> tuple[NDArray[np.float32], int]:
    """(H, W) float32 depth in metres (0 = none) and the count of pixels marked invalid.

    Reads ``compressedDepth`` PNG and RVL payloads of 16UC1/mono16 (millimetres) and 32FC1
    (quantised inverse depth) images, and the 16-bit PNGs the colour plugin writes when it is
    given a depth image (``"16UC1; png compressed "``, no header). The count is what
    :func:`~diff2scene.io.image_codec.decode_depth` would report for the image the reference
    subscriber produces: 32FC1 pixels coded 0 (NaN there) and any the header's quantisation
    turns non-finite or negative; 16-bit millimetres have none.
    """
    fmt = parse_compressed_format(format)
    if not fmt.depth:
        if fmt.codec == "png" and fmt.encoding in _DEPTH_MM_ENCODINGS:
            coded = _depth_png(_as_bytes(data, CORRUPT_DEPTH))
            return coded.astype(np.float32) * np.float32(0.001), 0
        raise InputError(
            UNSUPPORTED_FORMAT, f"format {format!r} is neither compressedDepth nor 16-bit PNG"
        )
    if fmt.encoding not in _DEPTH_MM_ENCODINGS | _DEPTH_M_ENCODINGS:
        raise InputError(
            UNSUPPORTED_FORMAT,
            f"compressedDepth of encoding {fmt.encoding!r}; expected 16UC1, mono16 or 32FC1",
        )
    buf = _as_bytes(data, CORRUPT_DEPTH)
    if buf.size <= CONFIG_HEADER.size:
        raise InputError(CORRUPT_DEPTH, f"{buf.size} bytes: no room for the 12-byte header")
    _, quant_a, quant_b = CONFIG_HEADER.unpack(buf[: CONFIG_HEADER.size].tobytes())
    payload = buf[CONFIG_HEADER.size :]
    coded = _depth_png(payload) if fmt.codec == "png" else _depth_rvl(payload)
    if fmt.encoding in _DEPTH_MM_ENCODINGS:
        # the header's quantisation fields are unset (garbage in older publishers) for 16-bit
        return coded.astype(np.float32) * np.float32(0.001), 0
    if not (np.isfinite(quant_a) and np.isfinite(quant_b)) or quant_a == 0.0:
        raise InputError(CORRUPT_DEPTH, f"inverse-depth header A={quant_a} B={quant_b}")
    valid = coded != 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = np.float32(quant_a) / (coded.astype(np.float32) - np.float32(quant_b))
    usable = valid & np.isfinite(depth) & (depth > 0)
    depth[~usable] = 0.0
    return depth.astype(np.float32, copy=False), int(usable.size - np.count_nonzero(usable))


# ---------------------------------------------------------------------------------------------
# RVL


def _nibbles(words: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Nibbles of little-endian 32-bit words, each word from its most significant nibble."""
    big_endian = words.reshape(-1, 4)[:, ::-1].reshape(-1)
    out = np.empty(big_endian.size * 2, dtype=np.uint8)
    out[0::2] = big_endian >> 4
    out[1::2] = big_endian & 0x0F
    return out


def rvl_decode(stream: CompressedData, n_pixels: int) -> NDArray[np.uint16]:
    """(n_pixels,) uint16 from an RVL stream (the bytes after the size prefix).

    Stricter than the reference decoder, which trusts the size prefix: the runs must fill
    exactly ``n_pixels`` and the stream must end there (only zero padding in the last word),
    so a size prefix that disagrees with the stream is an error, not a shifted image.
    Arithmetic is int32 throughout (half the memory traffic of int64): values are at most
    30 bits, and pixel sums only matter modulo 2¹⁶, which int32 wrap-around preserves.
    """
    buf = _as_bytes(stream, CORRUPT_DEPTH)
    if buf.size == 0 or buf.size % 4:
        raise InputError(CORRUPT_DEPTH, f"RVL stream of {buf.size} bytes is not whole words")
    nib = _nibbles(buf)
    # a nibble without the continuation bit ends a value
    ends = np.flatnonzero(nib < 8).astype(np.int32)
    if nib.size - 1 - (int(ends[-1]) if ends.size else -1) >= _RVL_MAX_NIBBLES:
        raise InputError(CORRUPT_DEPTH, "RVL stream ends in an unterminated value")
    if ends.size < 2:
        raise InputError(DEPTH_SIZE_MISMATCH, f"RVL stream too short for {n_pixels} pixels")
    lengths = np.diff(ends, prepend=np.int32(-1))
    starts = ends - lengths + 1
    values = (nib[starts] & 7).astype(np.int32)
    longer = np.flatnonzero(lengths > 1)
    group = 1
    while longer.size:
        if group >= _RVL_MAX_NIBBLES:
            raise InputError(CORRUPT_DEPTH, f"RVL value of more than {_RVL_MAX_NIBBLES} nibbles")
        values[longer] |= (nib[starts[longer] + group] & 7).astype(np.int32) << (3 * group)
        longer = longer[lengths[longer] > group + 1]
        group += 1

    # Run headers: a sequential walk, but only over runs (a few thousand per depth frame).
    heads: list[int] = []
    position = filled = 0
    n_values = values.size
    while filled < n_pixels:
        if position + 1 >= n_values:
            raise InputError(
                DEPTH_SIZE_MISMATCH, f"RVL stream ends after {filled} of {n_pixels} pixels"
            )
        zeros, nonzeros = int(values[position]), int(values[position + 1])
        filled += zeros + nonzeros
        heads.append(position)
        position += 2 + nonzeros
    if filled > n_pixels:
        raise InputError(DEPTH_SIZE_MISMATCH, f"RVL runs cover {filled} > {n_pixels} pixels")
    if position > n_values:
        raise InputError(DEPTH_SIZE_MISMATCH, "RVL stream ends inside a run of values")
    tail = nib[int(ends[position - 1]) + 1 :]
    if tail.size >= 8 or np.any(tail):
        raise InputError(
            DEPTH_SIZE_MISMATCH,
            f"{tail.size} nibbles of RVL data after {n_pixels} pixels: size prefix too small",
        )

    head = np.asarray(heads, dtype=np.int32)
    run_zeros = values[head]
    run_nonzeros = values[head + 1]
    is_delta = np.ones(position, dtype=bool)
    is_delta[head] = False
    is_delta[head + 1] = False
    positive = values[:position][is_delta]
    delta = positive >> 1
    delta ^= -(positive & 1)  # zigzag back to signed
    pixels = np.cumsum(delta, dtype=np.int32)
    pixels &= 0xFFFF
    # the g-th nonzero pixel of the image sits after all zeros up to and including its run
    where = np.repeat(np.cumsum(run_zeros, dtype=np.int32), run_nonzeros)
    where += np.arange(pixels.size, dtype=np.int32)
    out = np.zeros(n_pixels, dtype=np.uint16)
    out[where] = pixels
    return out


def _vle_nibbles(values: NDArray[np.int64]) -> NDArray[np.uint8]:
    """The variable-length code of each value: 3-bit groups, low first, bit 3 = more."""
    counts = np.ones(values.size, dtype=np.int64)
    for group in range(1, _RVL_MAX_NIBBLES):  # values here are < 2^26, at most 9 groups
        counts += values >= (1 << (3 * group))
    first = np.cumsum(counts) - counts
    owner = np.repeat(np.arange(values.size), counts)
    group_index = np.arange(int(counts.sum())) - first[owner]
    more = group_index < counts[owner] - 1
    groups = (values[owner] >> (3 * group_index)) & 7
    return np.asarray(groups | (more.astype(np.int64) << 3), dtype=np.uint8)


def rvl_encode(pixels: NDArray[np.uint16]) -> bytes:
    """The RVL stream of a uint16 image in row-major order, as the reference encoder writes it."""
    flat = np.ascontiguousarray(pixels, dtype=np.uint16).reshape(-1)
    if flat.size == 0:
        return b""
    nonzero = flat != 0
    bounds = np.concatenate(([0], np.flatnonzero(nonzero[1:] != nonzero[:-1]) + 1, [flat.size]))
    lengths = np.diff(bounds)
    if nonzero[0]:  # every (zeros, nonzeros) pair starts with a zero run, maybe empty
        lengths = np.concatenate(([0], lengths))
    if lengths.size % 2:  # ends in zeros: the last pair has no nonzeros
        lengths = np.concatenate((lengths, [0]))
    run_zeros, run_nonzeros = lengths[0::2], lengths[1::2]
    current = flat[nonzero].astype(np.int64)
    delta = np.diff(current, prepend=0)
    positive = (delta << 1) ^ (delta >> 63)  # zigzag: small |delta| → small code

    values = np.empty(2 * run_zeros.size + current.size, dtype=np.int64)
    head = 2 * np.arange(run_zeros.size) + np.cumsum(run_nonzeros) - run_nonzeros
    is_delta = np.ones(values.size, dtype=bool)
    is_delta[head] = False
    is_delta[head + 1] = False
    values[head] = run_zeros
    values[head + 1] = run_nonzeros
    values[is_delta] = positive

    nib = _vle_nibbles(values)
    nib = np.concatenate((nib, np.zeros(-nib.size % 8, dtype=np.uint8)))
    big_endian = (nib[0::2] << 4) | nib[1::2]
    return bytes(big_endian.reshape(-1, 4)[:, ::-1].tobytes())


# ---------------------------------------------------------------------------------------------
# Encoders: what image_transport's publishers put on the wire (tests, synthetic bags)


def encode_compressed_color(
    rgb: NDArray[np.uint8],
    fmt: str = "jpeg",
    *,
    encoding: str = "rgb8",
    jpeg_quality: int = 95,
    png_level: int = 3,
) -> tuple[str, bytes]:
    """``(format, data)`` of the ``compressed`` transport for an (H, W, 3) uint8 RGB image.

    ``encoding`` is the raw image's encoding the publisher saw (realsense-ros publishes
    ``rgb8``); like the plugin, the file holds true RGB and the format names ``bgr8``.
    Defaults are the plugin's (JPEG quality 95, PNG level 3).
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if encoding not in _COLOR_ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not a colour encoding")
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "jpeg":
        image.save(out, format="JPEG", quality=jpeg_quality)
    elif fmt == "png":
        image.save(out, format="PNG", compress_level=png_level)
    else:
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    return f"{encoding}; {fmt} compressed bgr8", out.getvalue()


def _inverse_depth(
    depth_m: NDArray[np.float32], depth_max_m: float, depth_quantization: float
) -> tuple[NDArray[np.uint16], float, float]:
    """Quantised inverse depth and its (A, B), in float32 like the plugin."""
    z0 = np.float32(depth_quantization)
    quant_a = z0 * (z0 + np.float32(1.0))
    quant_b = np.float32(1.0) - quant_a / np.float32(depth_max_m)
    depth = depth_m.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = quant_a / depth + quant_b
    # the plugin's float→uint16 cast is only defined in range; keep what it defines, drop the rest
    ok = (depth > 0) & (depth < np.float32(depth_max_m)) & (q >= 1.0) & (q < 65536.0)
    coded = np.where(ok, np.trunc(np.where(ok, q, 0)), 0).astype(np.uint16)
    return coded, float(quant_a), float(quant_b)


def encode_compressed_depth(
    depth_m: NDArray[np.float32],
    encoding: str = "16UC1",
    codec: str = "png",
    *,
    depth_max_m: float = 10.0,
    depth_quantization: float = 100.0,
    png_level: int = 9,
) -> tuple[str, bytes]:
    """``(format, data)`` of the ``compressedDepth`` transport for (H, W) depth in metres.

    0/NaN/inf mean no depth. ``16UC1`` rounds to millimetres and zeroes depths beyond
    ``depth_max_m`` as the plugin does; ``32FC1`` stores quantised inverse depth, which fits
    uint16 only from ``A / (65535 - B)`` on (0.152 m with the defaults): nearer depths, where
    the plugin's float→uint16 cast is undefined, are stored as "no depth". Defaults are the
    plugin's (depth_max 10 m, quantisation 100, PNG level 9).
    """
    if depth_m.ndim != 2 or depth_m.size == 0:
        raise ValueError(f"expected (H, W) depth, got shape {depth_m.shape}")
    if codec not in ("png", "rvl"):
        raise ValueError(f"codec must be 'png' or 'rvl', got {codec!r}")
    if encoding in _DEPTH_MM_ENCODINGS:
        with np.errstate(invalid="ignore"):
            mm = np.round(np.nan_to_num(depth_m.astype(np.float64), nan=0.0, posinf=0.0) * 1000)
        max_mm = int(np.float32(depth_max_m) * np.float32(1000.0))
        coded = np.where((mm > 0) & (mm <= min(max_mm, 65535)), mm, 0).astype(np.uint16)
        header = CONFIG_HEADER.pack(INV_DEPTH, 0.0, 0.0)
    elif encoding in _DEPTH_M_ENCODINGS:
        coded, quant_a, quant_b = _inverse_depth(depth_m, depth_max_m, depth_quantization)
        header = CONFIG_HEADER.pack(INV_DEPTH, quant_a, quant_b)
    else:
        raise ValueError(f"encoding must be 16UC1, mono16 or 32FC1, got {encoding!r}")
    if codec == "png":
        out = io.BytesIO()
        Image.fromarray(coded).save(out, format="PNG", compress_level=png_level)
        body = out.getvalue()
    else:
        rows, cols = coded.shape
        body = RVL_SIZE.pack(cols, rows) + rvl_encode(coded)
    return f"{encoding}; compressedDepth {codec}", header + body
