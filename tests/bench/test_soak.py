"""The soak's fault accounting (``bench/soak.py``): each injected fault is found in its own
kind's counter by the stamp the soak gave it, so that no other count can pass for it."""

from __future__ import annotations

import pytest

from bench.soak import fault_books, rss_windows
from bench.soak_faults import KINDS, OTHER_KINDS


def test_a_fault_counts_only_when_its_own_stamp_is_in_its_own_counter() -> None:
    injected = {"pose_jump": 2, "stale_stamp": 1, "nan_inf_depth": 1, "size_mismatch": 1,
                "segmenter_exception": 2}
    stamps = {"pose_jump": [10, 20], "stale_stamp": [30], "nan_inf_depth": [40],
              "size_mismatch": [50]}
    journal: list[tuple[str, int | None]] = [
        # both jumps, and the real frame after each (compared with the jumped pose)
        ("frames_skipped_pose_jump", 10), ("frames_skipped_pose_jump", 11),
        ("frames_skipped_pose_jump", 20), ("frames_skipped_pose_jump", 21),
        # a real frame that came late, not the injected stale one: the old check (counter >=
        # injected) took it for the fault
        ("skipped_stale_stamp", 31),
        # the injected NaN frame went elsewhere; a real frame filled its counter
        ("skipped_no_depth_match", 40), ("frames_skipped_no_valid_depth", 41),
        ("skipped_size_mismatch", 50),
    ]
    final = {"frames_skipped_pose_jump": 4, "skipped_stale_stamp": 1,
             "frames_skipped_no_valid_depth": 1,
             "skipped_size_mismatch": 2,  # one count the journal does not itemise
             "segment_errors_InjectedSegmenterError": 2}
    books = fault_books(injected, stamps, journal, final)
    assert books["pose_jump"] == {
        "counter": "frames_skipped_pose_jump", "injected": 2, "attributed": 2, "counted": 4,
        "other": 2, "journaled": 4, "exact": True}
    assert (books["stale_stamp"]["attributed"], books["stale_stamp"]["exact"]) == (0, False)
    assert (books["nan_inf_depth"]["attributed"], books["nan_inf_depth"]["other"]) == (0, 1)
    assert not books["nan_inf_depth"]["exact"]
    assert books["size_mismatch"]["attributed"] == 1 and not books["size_mismatch"]["exact"]
    # tagged by its exception type, which only the soak raises
    assert books["segmenter_exception"]["exact"]
    final["segment_errors_InjectedSegmenterError"] = 1
    assert not fault_books(injected, stamps, journal, final)["segmenter_exception"]["exact"]
    # a kind never injected is not counted exactly, whatever its counter says
    assert not fault_books({"pose_jump": 0}, {"pose_jump": []}, journal, final)[
        "pose_jump"]["exact"]


def test_rss_growth_is_the_last_5_minutes_over_minutes_5_to_10() -> None:
    mib = 2**20
    samples = [(t, (100 if t < 600 else 104) * mib, 0) for t in range(0, 1201, 5)]
    growth, base, last = rss_windows(samples, 1200.0)
    assert growth == pytest.approx(4.0) and base == 100 * mib and last == 104 * mib
    # 14 minutes: the last 5 would start before minute 10, so there is no such figure
    assert rss_windows(samples[: 14 * 12 + 1], 840.0)[0] is None
    assert rss_windows(samples[:12], 55.0) == (None, None, 100 * mib)


@pytest.mark.ros
@pytest.mark.slow
def test_a_short_soak_counts_every_injected_fault_under_its_own_kind() -> None:
    pytest.importorskip("tf2_msgs", reason="tf2_msgs is not built: run `make setup`")
    from bench.soak import run

    # The node process, the player, the injector and a small storm, as in the soak; a tiny bag
    # played at its own speed for 18 s, a fault every 0.4 s after the injector started (each
    # kind about three times) and the 2D model failing on every 2nd keyframe. About 45 s on 2
    # shared cores, most of it process start-up.
    figures = run(0.3, 1.0, width=64, height=48, bag_frames=20, bag_hz=5.0, keep=False,
                  inject_every_s=0.4, storm_clients=2, storm_queries=2,
                  segmenter_fault_every=2)
    books = figures["_fault_books"]
    assert figures["node_crashes"] == 0
    injected = {kind: row["injected"] for kind, row in books.items()}
    assert all(injected[kind] for kind in (*KINDS, *OTHER_KINDS)), injected
    assert {kind: row for kind, row in books.items() if not row["exact"]} == {}
    assert figures["fault_kinds_counted_exactly"] == figures["fault_kinds_injected"] == 12
    assert figures["fault_counts_not_journaled"] == 0
