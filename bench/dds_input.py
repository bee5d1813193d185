"""DDS delivery of large camera images between processes on this machine → dds_input.json.

Why: the node's default input QoS should come from a measurement, not a convention. ROS camera
drivers and ``sensor_data`` profiles use best effort, but on Fast DDS a best-effort reader drops
a whole image when any of its fragments is lost, and large images have many fragments.

For each resolution (640×480, 848×480, 1280×720), rate (5, 15, 30 Hz), reliability (best
effort, reliable) and Fast DDS transport (shared memory, UDP loopback) a publisher process sends
colour (bgr8) + depth (32FC1) pairs for a few seconds and a subscriber process counts what
arrives: ``received_ratio_<res>_<hz>hz_<qos>_<transport>`` = colour images received / published.
A second part plays an 848×480 bgr8/32FC1/Odometry bag at 3.75 Hz from a player process into
the real node process with its default parameters and reports the share of frames integrated.

    python -m bench.dds_input [--seconds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, write_results

RESOLUTIONS = ((640, 480), (848, 480), (1280, 720))
RATES_HZ = (5, 15, 30)
QOS = ("best_effort", "reliable")
#: our name → FASTDDS_BUILTIN_TRANSPORTS value
TRANSPORTS = {"shm": "SHM", "udp": "UDPv4"}
REPO = Path(__file__).resolve().parents[1]


def _qos(name: str) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if name == "best_effort":
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _subscriber(qos: str, idle_s: float, max_s: float) -> None:
    """Count colour and depth images until none came for ``idle_s`` after the first."""
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_bench_sub")
    counts = {"color": 0, "depth": 0}
    last = [0.0]

    def counter(key: str) -> Any:
        def on_msg(_msg: Image) -> None:
            counts[key] += 1
            last[0] = time.monotonic()
        return on_msg

    node.create_subscription(Image, "bench/color", counter("color"), _qos(qos))
    node.create_subscription(Image, "bench/depth", counter("depth"), _qos(qos))
    print("READY", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < max_s:
        rclpy.spin_once(node, timeout_sec=0.05)
        if last[0] and time.monotonic() - last[0] > idle_s:
            break
    print(json.dumps(counts), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _publisher(width: int, height: int, rate_hz: float, seconds: float, qos: str) -> None:
    """Publish colour + depth pairs at ``rate_hz``; print how many went out."""
    import numpy as np
    import rclpy

    from diff2scene_ros import conversions as cv

    rclpy.init()
    node = rclpy.create_node("dds_bench_pub")
    color_pub = node.create_publisher(cv.Image, "bench/color", _qos(qos))
    depth_pub = node.create_publisher(cv.Image, "bench/depth", _qos(qos))
    deadline = time.monotonic() + 20.0
    while (color_pub.get_subscription_count() == 0 or depth_pub.get_subscription_count() == 0) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # discovery of both readers settles
    rng = np.random.default_rng(0)
    color = cv.rgb_to_image(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                            encoding="bgr8")
    depth = cv.depth_to_image(rng.uniform(0.5, 4.0, (height, width)).astype(np.float32))
    n = max(1, round(seconds * rate_hz))
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate_hz
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stamp = cv.ns_to_stamp(time.time_ns())
        color.header.stamp = depth.header.stamp = stamp
        color_pub.publish(color)
        depth_pub.publish(depth)
    elapsed = time.monotonic() - start
    time.sleep(1.0)  # reliable readers take the tail
    print(json.dumps({"published": n, "achieved_hz": n / elapsed if elapsed else 0.0}),
          flush=True)
    node.destroy_node()
    rclpy.shutdown()


def _env(transport: str, domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env["FASTDDS_BUILTIN_TRANSPORTS"] = TRANSPORTS[transport]
    env["ROS_DOMAIN_ID"] = str(domain)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def measure(width: int, height: int, rate_hz: float, qos: str, transport: str, *,
            seconds: float) -> dict[str, float]:
    env = _env(transport, random.randint(1, 100))
    me = [sys.executable, "-m", "bench.dds_input"]
    sub = subprocess.Popen([*me, "--role", "sub", "--qos", qos], env=env, cwd=REPO,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout is not None
        sub.stdout.readline()  # READY
        pub = subprocess.run(
            [*me, "--role", "pub", "--qos", qos, "--width", str(width), "--height", str(height),
             "--rate", str(rate_hz), "--seconds", str(seconds)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
        )
        sent = json.loads(pub.stdout.strip().splitlines()[-1])
        got = json.loads(sub.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if sub.poll() is None:
            sub.kill()
    return {
        "published": sent["published"],
        "achieved_hz": sent["achieved_hz"],
        "color": got["color"],
        "depth": got["depth"],
    }


def holdout(seconds_per_frame: float, n: int) -> dict[str, float]:
    """The 848×480 bgr8/32FC1/Odometry bag at 1/``seconds_per_frame`` Hz through the node with
    default parameters (tiny 2D model), player and node in separate processes."""
    from tests.diff2scene_ros.test_live_equals_replay import write_camera_bag

    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "bag"
        write_camera_bag(bag, n, period_ns=round(seconds_per_frame * 1e9), width=848,
                         height=480)
        out = Path(tmp) / "node"
        env = dict(os.environ)
        env["ROS_DOMAIN_ID"] = str(random.randint(1, 100))
        env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
        node = subprocess.Popen(
            [sys.executable, "-m", "tests.diff2scene_ros.recording_node", str(out), "900",
             "--ros-args", "-p", "segmenter.profile:=tiny"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            subprocess.run([sys.executable, "-m", "diff2scene.cli", "play", str(bag),
                            "--wait-for-subscribers-s", "120"],
                           env=env, cwd=REPO, capture_output=True, timeout=600, check=True)
            deadline = time.monotonic() + 300
            stats: dict[str, Any] = {}
            while time.monotonic() < deadline:
                path = out / "diagnostics.json"
                stats = json.loads(path.read_text()) if path.is_file() else {}
                if int(stats.get("frames_in", -1)) >= int(stats.get("frames_assembled", 0)) \
                        and int(stats.get("frame_queue_depth", 1)) == 0 \
                        and int(stats.get("color_msgs", 0)) >= n:
                    break
                time.sleep(0.5)
        finally:
            (out / "stop").touch()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
    reasons = {f"holdout_{k}": int(v) for k, v in stats.items()
               if k.startswith(("skipped_", "frames_skipped_")) and int(v)}
    return reasons | {
        "holdout_frames_published": n,
        "holdout_color_received": int(stats.get("color_msgs", 0)),
        "holdout_frames_integrated": int(stats.get("frames_integrated", 0)),
        "holdout_integrated_ratio": int(stats.get("frames_integrated", 0)) / n,
        "holdout_frames_unaccounted": int(stats.get("frames_unaccounted", -1)),
    }


def _notes(seconds: float) -> str:
    load = os.getloadavg()
    return (
        f"Publisher and subscriber are separate processes on one machine (ROS 2 Jazzy wheels, "
        f"Fast DDS, ROS_LOCALHOST_ONLY=1), {seconds:g} s per configuration, transport "
        "forced with FASTDDS_BUILTIN_TRANSPORTS (SHM or UDPv4). A ratio is colour images "
        "received over published; `published_hz_*` is the rate the Python publisher achieved. "
        "The hold-out run plays an 848x480 bgr8/32FC1/Odometry bag at 3.75 Hz (player process) "
        "into the node (own process, default parameters, so the node's participant receives "
        "over UDP as `choose_dds_transport` sets it; tiny 2D model). "
        f"Load average at the end: {load[0]:.1f} (2 cores, other work running)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("driver", "pub", "sub"), default="driver")
    parser.add_argument("--qos", choices=QOS, default="reliable")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="848x480 only")
    parser.add_argument("--holdout-only", action="store_true",
                        help="only rerun the hold-out part, updating dds_input.json")
    args = parser.parse_args()
    if args.role == "sub":
        _subscriber(args.qos, idle_s=2.0, max_s=120.0)
        return 0
    if args.role == "pub":
        _publisher(args.width, args.height, args.rate, args.seconds, args.qos)
        return 0

    if args.holdout_only:
        path = RESULTS_DIR / "dds_input.json"
        old = json.loads(path.read_text())
        figures = {k: v for k, v in old.items()
                   if not k.startswith("holdout_") and k not in ("machine", "measured_utc")}
        figures.update(holdout(1 / 3.75, 60))
        figures["holdout_measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        figures["holdout_load_average"] = round(os.getloadavg()[0], 1)
        write_results("dds_input", figures, title="DDS delivery of camera images",
                      notes=_notes(args.seconds) + " The hold-out part was rerun alone at "
                      f"{figures['holdout_measured_utc']}.")
        print(json.dumps({k: v for k, v in figures.items() if k.startswith("holdout")}))
        return 0
    figures: dict[str, Any] = {}
    resolutions = ((848, 480),) if args.quick else RESOLUTIONS
    t0 = time.perf_counter()
    for (w, h) in resolutions:
        for hz in RATES_HZ:
            for transport in TRANSPORTS:
                for qos in QOS:
                    r = measure(w, h, hz, qos, transport, seconds=args.seconds)
                    key = f"{w}x{h}_{hz}hz_{qos}_{transport}"
                    figures[f"received_ratio_{key}"] = round(r["color"] / r["published"], 3)
                    figures[f"depth_received_ratio_{key}"] = round(r["depth"] / r["published"], 3)
                    figures[f"published_hz_{key}"] = round(r["achieved_hz"], 2)
                    print(key, r, flush=True)
    ratios = {k: v for k, v in figures.items() if k.startswith("received_ratio_")}
    for qos in QOS:
        values = [v for k, v in ratios.items() if f"_{qos}_" in k]
        figures[f"min_received_ratio_{qos}"] = min(values)
        figures[f"mean_received_ratio_{qos}"] = round(sum(values) / len(values), 3)
    chosen = "reliable" if figures["min_received_ratio_reliable"] >= figures[
        "min_received_ratio_best_effort"] else "sensor_data"
    figures["chosen_default_input_qos"] = chosen
    figures.update(holdout(1 / 3.75, 60))
    figures["bench_s"] = round(time.perf_counter() - t0, 1)
    notes = _notes(args.seconds)
    write_results("dds_input", figures, title="DDS delivery of camera images", notes=notes)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
