"""Decode benchmark: compressed colour and compressedDepth payloads per 640×480 frame.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.decode`` (writes bench/results/decode.*).

Content: one frame of the synthetic 7 × 6 m room (``diff2scene.synth``, seed 0, frame 40 of the
300-frame loop) rendered at 640 × 480 with the sensor noise model (depth noise, edge and
random dropout, colour noise), encoded the way image_transport's plugins encode it with
their defaults: JPEG quality 95; compressedDepth of 16UC1 millimetres as PNG level 9 or RVL;
the 32FC1 figures use the inverse-depth quantisation (depth_max 10 m, z0 100).

The headline figures time the module's decoders end to end (format parsing, header checks,
decode, conversion to RGB uint8 / float32 metres). The candidate libraries are timed on the
same payloads doing the least work that yields the same array (OpenCV includes its BGR→RGB
swap, which the others need not do). Candidates that are not installed are listed as
missing; the figures in bench/results/decode.json were taken with them installed next to the
venv (see the markdown notes). All decoders take turns within each round so that load from
other processes hits them alike; figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from numpy.typing import NDArray
from PIL import Image

import diff2scene.io.compressed as codec
from bench.common import write_results
from diff2scene.synth.render import RenderConfig, Renderer, camera_path
from diff2scene.synth.scene import SceneConfig, generate_scene

FRAME_INDEX = 40


def render_frame() -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """(480, 640, 3) RGB and (480, 640) depth in metres of the synthetic room."""
    scene = generate_scene(
        0, SceneConfig(room_width_range_m=(7.0, 7.0), room_depth_range_m=(6.0, 6.0))
    )
    config = RenderConfig()
    frame = Renderer(scene, config).frame(FRAME_INDEX, camera_path(scene, config)[FRAME_INDEX])
    return frame.rgb, frame.depth_m


def optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def numba_rvl(numba: Any) -> Callable[[NDArray[np.uint8], int], NDArray[np.uint16]]:
    """The candidate RVL decoder: the reference algorithm's loop, compiled by numba."""

    @numba.njit(cache=False)  # type: ignore[untyped-decorator]
    def decode(words: NDArray[np.uint32], n_pixels: int) -> NDArray[np.uint16]:
        out = np.zeros(n_pixels, np.uint16)
        at = 0
        left = 0
        word = 0
        previous = 0
        filled = 0
        while filled < n_pixels:
            head = np.zeros(2, np.int64)
            for h in range(2):
                value = 0
                shift = 0
                while True:
                    if left == 0:
                        word = int(words[at])
                        at += 1
                        left = 8
                    nib = (word >> 28) & 0xF
                    word = (word << 4) & 0xFFFFFFFF
                    left -= 1
                    value |= (nib & 7) << shift
                    shift += 3
                    if nib < 8:
                        break
                head[h] = value
            filled += head[0]
            for k in range(head[1]):
                value = 0
                shift = 0
                while True:
                    if left == 0:
                        word = int(words[at])
                        at += 1
                        left = 8
                    nib = (word >> 28) & 0xF
                    word = (word << 4) & 0xFFFFFFFF
                    left -= 1
                    value |= (nib & 7) << shift
                    shift += 3
                    if nib < 8:
                        break
                previous = (previous + ((value >> 1) ^ -(value & 1))) & 0xFFFF
                out[filled + k] = previous
            filled += head[1]
        return out

    def run(stream: NDArray[np.uint8], n_pixels: int) -> NDArray[np.uint16]:
        return decode(stream.view("<u4").astype(np.uint32), n_pixels)  # type: ignore[no-any-return]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="decodes per decoder (median)")
    args = parser.parse_args()
    load_before = os.getloadavg()

    rgb, depth_m = render_frame()
    height, width = depth_m.shape
    jpeg_fmt, jpeg = codec.encode_compressed_color(rgb, "jpeg")
    png_fmt, depth_png = codec.encode_compressed_depth(depth_m, "16UC1", "png")
    rvl_fmt, depth_rvl = codec.encode_compressed_depth(depth_m, "16UC1", "rvl")
    png32_fmt, depth_png32 = codec.encode_compressed_depth(depth_m, "32FC1", "png")
    rvl32_fmt, depth_rvl32 = codec.encode_compressed_depth(depth_m, "32FC1", "rvl")
    png_body = np.frombuffer(depth_png, np.uint8)[codec.CONFIG_HEADER.size :]
    rvl_stream = np.frombuffer(depth_rvl, np.uint8)[codec.CONFIG_HEADER.size + 8 :]
    n_pixels = height * width

    # every decoder must return the same array before it is timed
    mm = codec.rvl_decode(rvl_stream, n_pixels)
    decoded_rgb = codec.decode_compressed_color(jpeg_fmt, jpeg)
    np.testing.assert_array_equal(codec.decode_compressed_depth(png_fmt, depth_png)[0],
                                  codec.decode_compressed_depth(rvl_fmt, depth_rvl)[0])

    def pillow_jpeg() -> object:
        return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))

    def pillow_png() -> object:
        return np.asarray(Image.open(io.BytesIO(png_body.tobytes())))

    decoders: dict[str, Callable[[], object]] = {
        "jpeg_decode_ms_640x480": lambda: codec.decode_compressed_color(jpeg_fmt, jpeg),
        "compressed_depth_png_decode_ms_640x480": lambda: codec.decode_compressed_depth(
            png_fmt, depth_png
        ),
        "rvl_decode_ms_640x480": lambda: codec.decode_compressed_depth(rvl_fmt, depth_rvl),
        "compressed_depth_png_32fc1_decode_ms_640x480": lambda: codec.decode_compressed_depth(
            png32_fmt, depth_png32
        ),
        "rvl_32fc1_decode_ms_640x480": lambda: codec.decode_compressed_depth(
            rvl32_fmt, depth_rvl32
        ),
        "candidate_jpeg_pillow_ms": pillow_jpeg,
        "candidate_png16_pillow_ms": pillow_png,
        "candidate_rvl_numpy_ms": lambda: codec.rvl_decode(rvl_stream, n_pixels),
    }
    checks: dict[str, tuple[Callable[[], object], NDArray[Any], int]] = {}
    missing: list[str] = []
    versions = {"pillow": PIL.__version__, "numpy": np.__version__}

    cv2 = optional("cv2")
    if cv2 is not None:
        versions["opencv"] = cv2.__version__
        cv2.setNumThreads(1)  # like every decoder here (and the project's workers): one thread
        jpeg_buf = np.frombuffer(jpeg, np.uint8)

        def cv_jpeg() -> object:
            bgr = cv2.imdecode(jpeg_buf, cv2.IMREAD_COLOR)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

        def cv_png() -> object:
            return cv2.imdecode(png_body, cv2.IMREAD_UNCHANGED)

        decoders["candidate_jpeg_opencv_ms"] = cv_jpeg
        decoders["candidate_png16_opencv_ms"] = cv_png
        checks["candidate_png16_opencv_ms"] = (cv_png, mm, 0)
        checks["candidate_jpeg_opencv_ms"] = (cv_jpeg, decoded_rgb, 3)
    else:
        missing.append("opencv-python-headless")
    simplejpeg = optional("simplejpeg")
    if simplejpeg is not None:
        versions["simplejpeg"] = simplejpeg.__version__

        def sj_jpeg() -> object:
            return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")

        decoders["candidate_jpeg_simplejpeg_ms"] = sj_jpeg
        checks["candidate_jpeg_simplejpeg_ms"] = (sj_jpeg, decoded_rgb, 3)
    else:
        missing.append("simplejpeg")
    pyspng = optional("pyspng")
    if pyspng is not None:
        png_bytes = png_body.tobytes()

        def spng() -> object:  # 16-bit grey comes back as grey + alpha
            return pyspng.load(png_bytes)[:, :, 0]

        decoders["candidate_png16_pyspng_ms"] = spng
        checks["candidate_png16_pyspng_ms"] = (spng, mm, 0)
    else:
        missing.append("pyspng")
    numba = optional("numba")
    jit_s = float("nan")
    if numba is not None:
        versions["numba"] = numba.__version__
        rvl_numba = numba_rvl(numba)
        t0 = time.perf_counter()
        rvl_numba(rvl_stream, n_pixels)
        jit_s = time.perf_counter() - t0
        decoders["candidate_rvl_numba_ms"] = lambda: rvl_numba(rvl_stream, n_pixels)
        checks["candidate_rvl_numba_ms"] = (decoders["candidate_rvl_numba_ms"], mm, 0)
    else:
        missing.append("numba")
    for name, (fn, expected, tolerance) in checks.items():
        got = np.asarray(fn()).reshape(expected.shape).astype(int)
        if np.abs(got - expected).max() > tolerance:
            raise RuntimeError(f"{name} decodes a different image")

    times: dict[str, list[float]] = {name: [] for name in decoders}
    for fn in decoders.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in decoders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    figures: dict[str, float | int | str] = {
        name: round(statistics.median(values), 3) for name, values in times.items()
    }
    # the fastest round: the least disturbed by other processes on these shared cores
    figures |= {f"{name}_best": round(min(values), 3) for name, values in times.items()}

    def encode_ms(fn: Callable[[], object], repeats: int = 5) -> float:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return round(statistics.median(samples), 1)

    figures |= {
        "jpeg_encode_ms_640x480": encode_ms(lambda: codec.encode_compressed_color(rgb, "jpeg")),
        "compressed_depth_png_level9_encode_ms_640x480": encode_ms(
            lambda: codec.encode_compressed_depth(depth_m, "16UC1", "png")
        ),
        "compressed_depth_png_level1_encode_ms_640x480": encode_ms(
            lambda: codec.encode_compressed_depth(depth_m, "16UC1", "png", png_level=1)
        ),
        "rvl_encode_ms_640x480": encode_ms(
            lambda: codec.encode_compressed_depth(depth_m, "16UC1", "rvl")
        ),
        "numba_first_call_compile_s": round(jit_s, 2),
        "jpeg_bytes": len(jpeg),
        "compressed_depth_png_bytes": len(depth_png),
        "rvl_bytes": len(depth_rvl),
        "raw_rgbd_bytes": rgb.nbytes + n_pixels * 2,
        "valid_depth_fraction": round(float(np.count_nonzero(depth_m > 0)) / n_pixels, 4),
        "rounds": args.rounds,
        "candidates_missing": ", ".join(missing) or "none",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 0,
        "load_avg_1min_before": round(load_before[0], 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }
    notes = (
        f"One {width}x{height} frame of the synthetic room (seed 0, frame {FRAME_INDEX}, "
        "sensor noise on), encoded with image_transport's defaults: JPEG q95; compressedDepth "
        "16UC1 PNG level 9 / RVL (32FC1: inverse depth, depth_max 10 m, z0 100). Each figure "
        f"is the median of {args.rounds} decodes (`*_best`: the fastest of them, the least "
        "disturbed by other processes); all decoders take turns in each round, one thread each. "
        "Headline figures (`jpeg_decode_ms_640x480`, `compressed_depth_png_decode_ms_640x480`, "
        "`rvl_decode_ms_640x480`) are the module's decoders end to end: format parsing, header "
        "checks, decode, conversion to RGB uint8 / float32 metres. `candidate_*` time a bare "
        "library call on the same payload (OpenCV with its BGR→RGB swap; numba = the reference "
        "loop compiled, after `numba_first_call_compile_s` of JIT). Encode figures: median of 5. "
        "The load average is the whole machine's (other jobs share these cores), so compare "
        "figures within this table rather than across runs. Candidates were installed next to "
        "the venv for this run only (simplejpeg is a dependency): `pip install --target DIR "
        "opencv-python-headless==5.0.0.93 pyspng==0.1.4 numba==0.68.1 llvmlite==0.50.0`, then "
        "`PYTHONPATH=src:.:DIR python -m bench.decode`."
    )
    write_results("decode", figures, title="Decode benchmark (compressed image transport)",
                  notes=notes)
    for key, value in figures.items():
        print(f"{key}: {value}")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else "unknown"


if __name__ == "__main__":
    main()
