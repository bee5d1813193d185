"""Supervised stages: failures are caught, counted, logged once, and switch a stage off."""

from __future__ import annotations

import logging
import threading

import pytest

from diff2scene.errors import ConfigError, InputError
from diff2scene.supervise import Failure, Stage, StageSupervisor, SupervisorConfig


def _flaky(item: int) -> int:
    if item % 3 == 0:
        raise RuntimeError(f"bad item {item}")
    if item % 3 == 1:
        raise KeyError(item)
    return item * 10


def test_failures_are_counted_by_type_and_the_stage_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = Stage("model", max_consecutive_failures=5)
    with caplog.at_level(logging.ERROR):
        results = [stage.call(_flaky, i) for i in range(9)]
    assert [r for r in results if not isinstance(r, Failure)] == [20, 50, 80]
    failures = [r for r in results if isinstance(r, Failure)]
    assert [f.key for f in failures] == ["RuntimeError", "KeyError"] * 3
    st = stage.status()
    assert st.state == "ok"  # the last item succeeded
    assert st.successes == 3 and st.failures == 6
    assert st.errors == {"RuntimeError": 3, "KeyError": 3}
    assert st.last_error == "KeyError: 7"
    # Each type is logged once, with its traceback; the rest are only counted.
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 2
    assert all(r.exc_info is not None for r in logged)
    assert "bad item 0" in caplog.text and "bad item 3" not in caplog.text


def test_a_stage_failing_in_a_row_is_switched_off() -> None:
    calls: list[int] = []

    def broken(item: int) -> None:
        calls.append(item)
        raise MemoryError("CUDA out of memory")

    stage = Stage("segment2d", max_consecutive_failures=4)
    for i in range(10):
        result = stage.call(broken, i)
        assert isinstance(result, Failure)
    assert calls == [0, 1, 2, 3]  # off after the fourth failure in a row, never called again
    assert isinstance(result, Failure) and result.key == "segment2d_disabled" and not result.error
    st = stage.status()
    assert st.state == "disabled"
    assert st.failures == 4 and st.skipped_disabled == 6
    assert "4 failures in a row" in st.disabled_reason
    assert "CUDA out of memory" in st.disabled_reason
    assert st.as_dict()["state"] == "disabled" and st.as_dict()["errors_MemoryError"] == "4"
    stage.enable()
    assert stage.status().state == "ok"
    assert isinstance(stage.call(broken, 99), Failure) and calls[-1] == 99
    assert stage.status().state == "failing"


def test_a_success_resets_the_run_and_none_is_a_value() -> None:
    def alternate(i: int) -> None:
        if i % 2 == 0:
            raise ZeroDivisionError(i)

    stage = Stage("fusion", max_consecutive_failures=2)
    for i in range(10):  # fail, succeed, fail, succeed: never two in a row
        result = stage.call(alternate, i)
        assert (result is None) == bool(i % 2)
    assert stage.status().state == "ok" and stage.status().failures == 5


def test_bad_input_skips_the_item_without_switching_the_stage_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def reject(_: int) -> int:
        raise InputError("size_mismatch", "masks 4x4, depth 8x8")

    stage = Stage("unproject", max_consecutive_failures=2)
    with caplog.at_level(logging.WARNING):
        results = [stage.call(reject, i) for i in range(5)]
    assert all(isinstance(r, Failure) and r.key == "size_mismatch" for r in results)
    st = stage.status()
    assert st.state == "ok" and st.failures == 0
    assert st.skipped_inputs == {"size_mismatch": 5}
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None


def test_interrupts_are_not_swallowed() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Stage("x").call(interrupted)


def test_supervisor_shares_its_config_and_reports_every_stage() -> None:
    sup = StageSupervisor(SupervisorConfig(max_consecutive_failures=1))
    assert sup.stage("a") is sup.stage("a")
    sup.stage("a").call(lambda: 1 / 0)
    sup.stage("b").call(lambda: 1)
    status = sup.status()
    assert list(status) == ["a", "b"]
    assert status["a"].state == "disabled" and status["b"].state == "ok"
    assert sup.summary()["stage_a_failures"] == 1
    with pytest.raises(ConfigError):
        SupervisorConfig(max_consecutive_failures=0)


def test_counts_are_exact_under_concurrent_use() -> None:
    stage = Stage("shared", max_consecutive_failures=10**9)

    def hammer() -> None:
        for i in range(2000):
            stage.call(_flaky, i)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    st = stage.status()
    assert st.successes + st.failures == 8000
    assert st.errors["RuntimeError"] == 4 * 667
