from diff2scene.io.sync import ApproximateSync


def test_pairs_nearest_within_slop_and_counts_the_rest() -> None:
    sync: ApproximateSync[str, str] = ApproximateSync(slop_ns=5)
    out = []
    out += sync.add_a(100, "c100")
    out += sync.add_b(98, "d98")
    out += sync.add_b(103, "d103")  # nearer to 100 than 98? no: |98-100|=2 < 3
    out += sync.add_a(130, "c130")  # nothing within 5 ns
    out += sync.add_b(150, "d150")
    out += sync.add_a(160, "c160")
    out += sync.flush()
    assert out == [(100, "c100", "d98")]
    assert sync.stats.skipped["no_depth_match"] == 2


def test_each_depth_serves_one_colour() -> None:
    sync: ApproximateSync[str, str] = ApproximateSync(slop_ns=10)
    out = sync.add_b(100, "d100") + sync.add_a(101, "c101") + sync.add_a(102, "c102")
    out += sync.flush()
    assert out == [(101, "c101", "d100")]


def test_queue_is_bounded() -> None:
    sync: ApproximateSync[int, int] = ApproximateSync(slop_ns=0, max_queue=3)
    for t in range(10):
        sync.add_a(t, t)
    assert sync.stats.skipped["sync_queue_overflow"] == 7
