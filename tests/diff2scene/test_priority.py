"""The priority gate: background work waits while queries run, never longer than its bound."""

import threading
import time

import pytest

from diff2scene.priority import PriorityGate


def test_background_work_goes_at_once_when_no_query_runs() -> None:
    gate = PriorityGate(max_wait_s=5.0)
    assert gate.wait_turn() == 0.0
    assert gate.stats().waits == 0


def test_background_work_waits_until_the_last_query_ends() -> None:
    gate = PriorityGate(max_wait_s=30.0)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def query() -> None:
        with gate.priority(), gate.priority():  # nested and overlapping sections count once
            entered.set()
            release.wait(10.0)
            order.append("query done")

    worker = threading.Thread(target=query)
    worker.start()
    assert entered.wait(10.0)
    background = threading.Thread(target=lambda: (gate.wait_turn(), order.append("fusion")))
    background.start()
    time.sleep(0.05)  # give the background thread the chance to jump the queue (it must not)
    assert order == []
    release.set()
    worker.join(10.0)
    background.join(10.0)
    assert order == ["query done", "fusion"]
    stats = gate.stats()
    assert stats.waits == 1 and stats.waits_timed_out == 0 and stats.waited_s_total > 0.0


def test_a_wait_is_bounded_and_counted_when_queries_go_on() -> None:
    gate = PriorityGate(max_wait_s=0.05)
    with gate.priority():
        waited = gate.wait_turn()
    assert waited >= 0.05
    assert gate.stats().waits_timed_out == 1


def test_zero_turns_the_gate_off() -> None:
    gate = PriorityGate(max_wait_s=0.0)
    with gate.priority():
        assert gate.wait_turn() == 0.0
    assert gate.stats().waits == 0
    with pytest.raises(ValueError):
        PriorityGate(max_wait_s=-1.0)
