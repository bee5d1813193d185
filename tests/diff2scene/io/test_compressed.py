"""compressed / compressedDepth payloads, checked against encoders written independently here.

The PNG and RVL payloads below are built from the formats' descriptions (PNG: signature,
IHDR, zlib IDAT of unfiltered big-endian rows; RVL: nibble-by-nibble, as Wilson's paper
describes it), JPEGs by Pillow directly, and compressedDepth headers with ``struct`` — none of
them through the module under test.
"""

from __future__ import annotations

import array
import io
import struct
import zlib

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from diff2scene.errors import InputError
from diff2scene.io.compressed import (
    CORRUPT_DEPTH,
    CORRUPT_IMAGE,
    DEPTH_SIZE_MISMATCH,
    REASONS,
    UNSUPPORTED_FORMAT,
    CompressedFormat,
    decode_compressed_color,
    decode_compressed_depth,
    encode_compressed_color,
    encode_compressed_depth,
    parse_compressed_format,
    rvl_decode,
    rvl_encode,
)

# ------------------------------------------------------------------ independent encoders


def png_bytes(samples: NDArray[np.integer], *, bit_depth: int) -> bytes:
    """A PNG of (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA samples, filter 0 on every row."""
    grid = samples if samples.ndim == 3 else samples[:, :, None]
    height, width, channels = grid.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in grid)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(rgb: NDArray[np.uint8], quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def rvl_reference(pixels: list[int]) -> bytes:
    """RVL written one pixel and one nibble at a time from the algorithm's description."""
    nibbles: list[int] = []

    def vle(value: int) -> None:
        while True:
            group, value = value & 7, value >> 3
            nibbles.append(group | (8 if value else 0))
            if not value:
                return

    i, previous, n = 0, 0, len(pixels)
    while i < n:
        zeros = 0
        while i + zeros < n and pixels[i + zeros] == 0:
            zeros += 1
        i += zeros
        vle(zeros)
        nonzeros = 0
        while i + nonzeros < n and pixels[i + nonzeros] != 0:
            nonzeros += 1
        vle(nonzeros)
        for value in pixels[i : i + nonzeros]:
            delta = value - previous
            vle(2 * delta if delta >= 0 else -2 * delta - 1)
            previous = value
        i += nonzeros
    nibbles += [0] * (-len(nibbles) % 8)
    out = bytearray()
    for k in range(0, len(nibbles), 8):
        word = 0
        for nib in nibbles[k : k + 8]:
            word = (word << 4) | nib
        out += struct.pack("<I", word)
    return bytes(out)


def header(quant_a: float = 0.0, quant_b: float = 0.0) -> bytes:
    return struct.pack("<iff", 0, quant_a, quant_b)


def make_image() -> NDArray[np.uint8]:
    """(48, 64, 3) smooth colours with a few edges: JPEG-friendly, every channel different."""
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, 255 - x * 2 - y], axis=-1)
    rgb[10:20, 30:50] = (200, 30, 60)
    return rgb.clip(0, 255).astype(np.uint8)


def depth_mm_image(seed: int = 0) -> NDArray[np.uint16]:
    """(30, 40) millimetres: a slanted plane, a box, noise, holes, and extreme values."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:30, 0:40]
    mm = 900 + 40 * y + 3 * x + rng.integers(-4, 5, size=(30, 40))
    mm[5:12, 8:20] -= 350
    mm[rng.random((30, 40)) < 0.08] = 0
    mm[0, :6] = 0  # starts with a zero run
    mm[29, 35:] = [1, 65535, 1, 65535, 7]  # largest jumps, ends on nonzero
    return mm.astype(np.uint16)


# ------------------------------------------------------------------ format strings


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("rgb8; jpeg compressed bgr8", CompressedFormat("rgb8", "jpeg", False, True)),
        ("bgr8; png compressed bgr8", CompressedFormat("bgr8", "png", False, True)),
        ("rgb16; png compressed bgr16", CompressedFormat("rgb16", "png", False, True)),
        ("mono8; jpeg compressed mono8", CompressedFormat("mono8", "jpeg", False, True)),
        ("mono16; png compressed ", CompressedFormat("mono16", "png", False, True)),
        ("rgb8; jpeg compressed rgb8", CompressedFormat("rgb8", "jpeg", False, False)),
        ("rgba8; png compressed ", CompressedFormat("rgba8", "png", False, False)),
        ("jpeg", CompressedFormat("", "jpeg", False, True)),
        ("png", CompressedFormat("", "png", False, True)),
        ("16UC1; compressedDepth png", CompressedFormat("16UC1", "png", True)),
        ("32FC1; compressedDepth rvl", CompressedFormat("32FC1", "rvl", True)),
        ("16UC1; compressedDepth", CompressedFormat("16UC1", "png", True)),
    ],
)
def test_format_strings_as_image_transport_writes_them(
    fmt: str, expected: CompressedFormat
) -> None:
    assert parse_compressed_format(fmt) == expected


@pytest.mark.parametrize(
    "fmt",
    [
        "",
        "tiff",
        "rgb8; tiff compressed ",
        "rgb8; qoi compressed bgr8",
        "rgb8; jpeg",
        "rgb8; jpeg packed bgr8",
        "16UC1; compressedDepth zstd",
        "16UC1; compressedDepth png extra",
    ],
)
def test_unknown_formats_are_rejected(fmt: str) -> None:
    with pytest.raises(InputError) as err:
        parse_compressed_format(fmt)
    assert err.value.reason == UNSUPPORTED_FORMAT


# ------------------------------------------------------------------ colour


def test_jpeg_from_pillow_decodes_to_rgb_within_jpeg_error() -> None:
    rgb = make_image()
    data = jpeg_bytes(rgb)
    for fmt in ("rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", "jpeg"):
        out = decode_compressed_color(fmt, data)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        err = np.abs(out.astype(int) - rgb)
        assert err.mean() < 2.0 and np.percentile(err, 95) < 8  # chroma edges err more
        assert np.abs(out[15, 40].astype(int) - (200, 30, 60)).max() <= 8


def test_rgb_named_payload_has_its_channels_swapped_back() -> None:
    rgb = make_image()
    # a publisher that handed OpenCV an RGB buffer as BGR: the file holds B, G, R
    data = png_bytes(rgb[:, :, ::-1], bit_depth=8)
    np.testing.assert_array_equal(decode_compressed_color("rgb8; png compressed rgb8", data), rgb)
    np.testing.assert_array_equal(decode_compressed_color("bgr8; png compressed bgr8", data),
                                  rgb[:, :, ::-1])


def test_png_variants_decode_exactly() -> None:
    rgb = make_image()
    np.testing.assert_array_equal(
        decode_compressed_color("rgb8; png compressed bgr8", png_bytes(rgb, bit_depth=8)), rgb
    )
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 77, np.uint8)], axis=2)
    np.testing.assert_array_equal(
        decode_compressed_color("png", png_bytes(rgba, bit_depth=8)), rgb
    )
    grey = rgb[:, :, 1]
    out = decode_compressed_color("mono8; png compressed ", png_bytes(grey, bit_depth=8))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    rgb16 = rgb.astype(np.uint16) * 256 + 3  # 16-bit samples keep their high byte
    out16 = decode_compressed_color("rgb16; png compressed bgr16", png_bytes(rgb16, bit_depth=16))
    np.testing.assert_array_equal(out16, rgb)
    mono16 = png_bytes(grey.astype(np.uint16) << 8, bit_depth=16)
    out = decode_compressed_color("mono16; png compressed ", mono16)
    np.testing.assert_array_equal(out[..., 0], grey)


def test_grey_jpeg_is_replicated() -> None:
    grey = make_image()[:, :, 0]
    out = io.BytesIO()
    Image.fromarray(grey).save(out, format="JPEG", quality=95)
    rgb = decode_compressed_color("mono8; jpeg compressed mono8", out.getvalue())
    assert rgb.shape == (*grey.shape, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(int) - grey).mean() < 2.0


def test_cmyk_jpeg_is_converted() -> None:
    rgb = make_image()
    out = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(out, format="JPEG", quality=95)
    decoded = decode_compressed_color("jpeg", out.getvalue())
    assert np.abs(decoded.astype(int) - rgb).mean() < 3.0


def test_message_data_types_from_rosbags_and_rclpy() -> None:
    rgb = make_image()
    data = png_bytes(rgb, bit_depth=8)
    jpeg = jpeg_bytes(rgb)
    expected = decode_compressed_color("jpeg", jpeg)
    for kind in (bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8),
                 lambda b: array.array("B", b)):
        np.testing.assert_array_equal(decode_compressed_color("png", kind(data)), rgb)
        np.testing.assert_array_equal(decode_compressed_color("jpeg", kind(jpeg)), expected)


def test_fields_of_a_rosbags_compressed_image_message() -> None:
    """The encoders' output survives CDR, and rosbags' message fields go straight in."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    msg_type = store.types["sensor_msgs/msg/CompressedImage"]
    header_type = store.types["std_msgs/msg/Header"]
    stamp = store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2)
    mm = depth_mm_image()
    mm[mm > 10000] = 0  # beyond the plugin's default depth_max
    depth_m = mm.astype(np.float32) * np.float32(0.001)
    for fmt, data in (encode_compressed_color(make_image(), "jpeg"),
                      encode_compressed_depth(depth_m, "16UC1", "rvl")):
        msg = msg_type(header=header_type(stamp=stamp, frame_id="cam"), format=fmt,
                       data=np.frombuffer(data, np.uint8))
        raw = store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
        back = store.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
        if "Depth" in back.format:
            np.testing.assert_array_equal(decode_compressed_depth(back.format, back.data)[0],
                                          depth_m)
        else:
            assert decode_compressed_color(back.format, back.data).shape == (48, 64, 3)


def test_encode_color_writes_what_the_plugin_writes() -> None:
    rgb = make_image()
    fmt, data = encode_compressed_color(rgb, "png")
    assert fmt == "rgb8; png compressed bgr8"
    # the file holds true RGB, whatever the format string's "bgr8" suggests
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    np.testing.assert_array_equal(decode_compressed_color(fmt, data), rgb)
    fmt, data = encode_compressed_color(rgb, "jpeg", encoding="bgr8", jpeg_quality=90)
    assert fmt == "bgr8; jpeg compressed bgr8" and data[:3] == b"\xff\xd8\xff"
    assert np.abs(decode_compressed_color(fmt, data).astype(int) - rgb).mean() < 2.5
    with pytest.raises(ValueError, match="jpeg"):
        encode_compressed_color(rgb, "webp")


# ------------------------------------------------------------------ depth: PNG


def test_compressed_depth_png_16uc1() -> None:
    mm = depth_mm_image()
    data = header(123.0, -4.0) + png_bytes(mm, bit_depth=16)  # 16-bit ignores the params
    for fmt in ("16UC1; compressedDepth png", "16UC1; compressedDepth", "mono16; compressedDepth"):
        depth, n_bad = decode_compressed_depth(fmt, data)
        assert depth.dtype == np.float32 and depth.shape == mm.shape and n_bad == 0
        np.testing.assert_array_equal(depth, mm.astype(np.float32) * np.float32(0.001))


def test_depth_through_the_colour_plugin_as_16bit_png() -> None:
    mm = depth_mm_image()
    depth, n_bad = decode_compressed_depth("16UC1; png compressed ", png_bytes(mm, bit_depth=16))
    assert n_bad == 0
    np.testing.assert_array_equal(depth, mm.astype(np.float32) * np.float32(0.001))
    with pytest.raises(InputError) as err:  # lossy JPEG depth is not depth
        decode_compressed_depth("16UC1; jpeg compressed mono8", jpeg_bytes(make_image()))
    assert err.value.reason == UNSUPPORTED_FORMAT


def test_compressed_depth_png_32fc1_inverse_depth() -> None:
    rng = np.random.default_rng(3)
    depth_m = rng.uniform(0.3, 9.5, size=(20, 24)).astype(np.float32)
    depth_m[rng.random(depth_m.shape) < 0.1] = np.nan
    depth_m[0, 0] = 12.0  # beyond depth_max: no depth
    quant_a = np.float32(100.0) * np.float32(101.0)
    quant_b = np.float32(1.0) - quant_a / np.float32(10.0)
    with np.errstate(invalid="ignore"):
        ok = depth_m < 10.0
    q = np.zeros(depth_m.shape, np.uint16)
    q[ok] = np.trunc(quant_a / depth_m[ok] + quant_b).astype(np.uint16)
    data = header(float(quant_a), float(quant_b)) + png_bytes(q, bit_depth=16)
    depth, n_bad = decode_compressed_depth("32FC1; compressedDepth png", data)
    assert n_bad == int((~ok).sum()) > 0
    assert np.all(depth[~ok] == 0)
    expected = quant_a / (q[ok].astype(np.float32) - quant_b)
    np.testing.assert_array_equal(depth[ok], expected)
    # quantisation error of inverse depth grows with depth²: ~9 mm at 9.5 m with the defaults
    assert np.max(np.abs(depth[ok] - depth_m[ok]) / depth_m[ok] ** 2) < 1.1e-4


def test_encode_depth_png_header_and_filtering() -> None:
    depth_m = depth_mm_image().astype(np.float32) * np.float32(0.001)
    depth_m[3, 3] = 10.5  # beyond the plugin's default depth_max: zeroed
    depth_m[4, 4] = np.nan
    fmt, data = encode_compressed_depth(depth_m, "16UC1", "png")
    assert fmt == "16UC1; compressedDepth png"
    assert struct.unpack("<iff", data[:12]) == (0, 0.0, 0.0)
    decoded = np.asarray(Image.open(io.BytesIO(data[12:])))
    assert decoded.dtype == np.uint16 and decoded[3, 3] == 0 and decoded[4, 4] == 0
    depth, _ = decode_compressed_depth(fmt, data)
    keep = depth_m < 10.0
    np.testing.assert_allclose(depth[keep], depth_m[keep], atol=5e-4)

    fmt, data = encode_compressed_depth(depth_m, "32FC1", "png")
    assert fmt == "32FC1; compressedDepth png"
    kind, quant_a, quant_b = struct.unpack("<iff", data[:12])
    assert (kind, quant_a, quant_b) == (0, 10100.0, pytest.approx(1.0 - 1010.0))
    depth, n_bad = decode_compressed_depth(fmt, data)
    # inverse depth reaches uint16 only from A / (65535 - B) = 0.152 m on: nearer is dropped
    valid = (depth_m > 0.16) & (depth_m < 10.0)
    assert n_bad == int((~valid).sum())
    np.testing.assert_allclose(depth[valid], depth_m[valid], rtol=1e-3)


# ------------------------------------------------------------------ depth: RVL


def test_rvl_hand_checked_example() -> None:
    # [0, 0, 5, 6, 0]: zeros 2, nonzeros 2, deltas +5 (zigzag 10 = groups 2, 1 → nibbles A 1)
    # and +1 (zigzag 2), zeros 1, nonzeros 0 → nibbles 2 2 A 1 2 1 0 + pad 0 → 0x22A12100
    stream = bytes.fromhex("0021a122")
    assert rvl_reference([0, 0, 5, 6, 0]) == stream
    assert rvl_encode(np.array([0, 0, 5, 6, 0], np.uint16)) == stream
    np.testing.assert_array_equal(rvl_decode(stream, 5), [0, 0, 5, 6, 0])
    data = header() + struct.pack("<II", 5, 1) + stream
    depth, n_bad = decode_compressed_depth("16UC1; compressedDepth rvl", data)
    assert n_bad == 0
    expected = np.float32([[0, 0, 5, 6, 0]]) * np.float32(0.001)  # as decode_depth scales mm
    np.testing.assert_array_equal(depth, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rvl_matches_the_reference_encoding_exactly(seed: int) -> None:
    mm = depth_mm_image(seed)
    stream = rvl_reference(mm.ravel().tolist())
    np.testing.assert_array_equal(rvl_decode(stream, mm.size), mm.ravel())
    assert rvl_encode(mm) == stream
    data = header() + struct.pack("<II", 40, 30) + stream
    depth, _ = decode_compressed_depth("16UC1; compressedDepth rvl", data)
    np.testing.assert_array_equal(depth, mm.astype(np.float32) * np.float32(0.001))


@pytest.mark.parametrize(
    "pixels",
    [[0] * 50, [7] * 50, [1], [0], [65535, 0, 65535], [3, 0, 0, 0, 9000, 9001, 0]],
    ids=["all-zero", "all-nonzero", "one", "one-zero", "extremes", "mixed"],
)
def test_rvl_edge_cases(pixels: list[int]) -> None:
    stream = rvl_reference(pixels)
    assert rvl_encode(np.array(pixels, np.uint16)) == stream
    np.testing.assert_array_equal(rvl_decode(stream, len(pixels)), pixels)


def test_encode_depth_rvl_roundtrip_both_encodings() -> None:
    mm = depth_mm_image(5)
    mm[mm > 10000] = 0  # what the plugin's default depth_max (10 m) leaves
    depth_m = mm.astype(np.float32) * np.float32(0.001)
    fmt, data = encode_compressed_depth(depth_m, "16UC1", "rvl")
    assert fmt == "16UC1; compressedDepth rvl"
    assert struct.unpack("<II", data[12:20]) == (40, 30)
    assert data[20:] == rvl_reference(mm.ravel().tolist())
    depth, _ = decode_compressed_depth(fmt, data)
    np.testing.assert_array_equal(depth, depth_m)
    fmt32, data32 = encode_compressed_depth(depth_m, "32FC1", "rvl")
    fmt_png, data_png = encode_compressed_depth(depth_m, "32FC1", "png")
    rvl_depth, rvl_bad = decode_compressed_depth(fmt32, data32)
    png_depth, png_bad = decode_compressed_depth(fmt_png, data_png)
    np.testing.assert_array_equal(rvl_depth, png_depth)  # same quantised image, two codecs
    assert rvl_bad == png_bad == int((depth_m < 0.16).sum())


# ------------------------------------------------------------------ errors


def reason_of(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as err:
        fn(*args)
    assert err.value.reason in REASONS
    return err.value.reason


def test_colour_errors() -> None:
    rgb = make_image()
    jpeg = jpeg_bytes(rgb)
    png = png_bytes(rgb, bit_depth=8)
    broken_crc = png[:40] + bytes([png[40] ^ 0xFF]) + png[41:]
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, format="GIF")
    cases = {
        "empty": b"",
        "noise": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "jpeg header only": jpeg[:20],
        "truncated png": png[: len(png) // 2],
        "png with bad crc": broken_crc,
        "gif": gif.getvalue(),
    }
    for name, data in cases.items():
        assert reason_of(decode_compressed_color, "rgb8; jpeg compressed bgr8", data) == \
            CORRUPT_IMAGE, name
    assert reason_of(decode_compressed_color, "16UC1; compressedDepth png", png) == \
        UNSUPPORTED_FORMAT
    assert reason_of(decode_compressed_color, "rgb8; tiff compressed ", png) == UNSUPPORTED_FORMAT
    assert reason_of(decode_compressed_color, "png", np.zeros(4, np.float32)) == CORRUPT_IMAGE


def test_depth_errors() -> None:
    mm = depth_mm_image()
    png16 = png_bytes(mm, bit_depth=16)
    stream = rvl_reference(mm.ravel().tolist())
    rvl = "16UC1; compressedDepth rvl"
    cases = [
        ("16UC1; compressedDepth png", header(), CORRUPT_DEPTH),  # header only
        ("16UC1; compressedDepth png", b"\x00" * 5, CORRUPT_DEPTH),
        ("16UC1; compressedDepth png", header() + png16[:100], CORRUPT_DEPTH),
        ("16UC1; compressedDepth png", header() + png_bytes(mm.astype(np.uint8), bit_depth=8),
         CORRUPT_DEPTH),
        ("16UC1; compressedDepth png", header() + jpeg_bytes(make_image()), CORRUPT_DEPTH),
        ("32FC1; compressedDepth png", header(float("nan"), 1.0) + png16, CORRUPT_DEPTH),
        ("8UC1; compressedDepth png", header() + png16, UNSUPPORTED_FORMAT),
        ("rgb8; png compressed bgr8", header() + png16, UNSUPPORTED_FORMAT),
        (rvl, header() + b"\x01\x00", CORRUPT_DEPTH),  # no room for the size prefix
        (rvl, header() + struct.pack("<II", 0, 30) + stream, DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 40, 31) + stream, DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 40, 29) + stream, DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 1 << 16, 1 << 16) + stream, DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 40, 30) + stream[:-4], DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 40, 30) + stream[:-1], CORRUPT_DEPTH),
        (rvl, header() + struct.pack("<II", 40, 30) + stream + b"\x00" * 4, DEPTH_SIZE_MISMATCH),
        (rvl, header() + struct.pack("<II", 4, 1) + b"\xff" * 16, CORRUPT_DEPTH),
    ]
    for fmt, data, reason in cases:
        assert reason_of(decode_compressed_depth, fmt, data) == reason, (fmt, data[:24])


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        ("rgb8; jpeg compressed bgr8", lambda: jpeg_bytes(make_image())),
        ("rgb8; png compressed bgr8", lambda: png_bytes(make_image(), bit_depth=8)),
        ("16UC1; compressedDepth png",
         lambda: header() + png_bytes(depth_mm_image(), bit_depth=16)),
        ("16UC1; compressedDepth rvl",
         lambda: header() + struct.pack("<II", 40, 30) + rvl_reference(
             depth_mm_image().ravel().tolist())),
    ],
    ids=["jpeg", "png", "depth-png", "depth-rvl"],
)
def test_damaged_payloads_decode_or_raise_input_error(fmt: str, make) -> None:  # type: ignore[no-untyped-def]
    """Truncations and flipped bytes anywhere: a result or a counted skip, nothing else."""
    decode = decode_compressed_depth if "Depth" in fmt else decode_compressed_color
    good = make()
    rng = np.random.default_rng(11)
    for trial in range(60):
        data = bytearray(good)
        if trial % 2:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[at] ^= int(rng.integers(1, 256))
        try:
            decode(fmt, bytes(data))
        except InputError as err:
            assert err.reason in REASONS
