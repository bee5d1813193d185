"""The node's executor hands each task to its pool once, even while the pool is busy.

One pool thread is held by a slow timer callback while messages arrive on a subscription:
their task waits in the pool's queue. rclpy's ``MultiThreadedExecutor`` offers a task that has
not started again on every turn and hands it to the pool again each time (a loop that holds
the interpreter lock while the node is busiest); :class:`PoolExecutor` must hand it over once
and still deliver every message.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from diff2scene_ros.executor import HANDOVER_WAIT_S, PoolExecutor  # noqa: E402
from tests.support.ros import wait_for  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    # one pool thread is the point of the test
    pytest.mark.filterwarnings("ignore:MultiThreadedExecutor is used with a single thread"),
]

HOLD_S = 0.6
MESSAGES = 5
WAIT_S = 30.0


def _handovers_while_pool_busy(
    make_executor: Callable[[Context], MultiThreadedExecutor],
) -> tuple[int, list[str]]:
    """Hold the only pool thread HOLD_S, publish meanwhile; returns (pool submissions during
    the hold, messages the subscription got)."""
    context = Context()
    rclpy.init(context=context, domain_id=random.randint(1, 100))
    node = Node(f"executor_test_{random.randrange(1 << 30)}", context=context)
    holding = threading.Event()
    held_once: list[bool] = []
    received: list[str] = []

    def hold() -> None:
        if not held_once:
            held_once.append(True)
            holding.set()
            time.sleep(HOLD_S)

    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    topic = f"executor_test_{random.randrange(1 << 30)}"
    node.create_timer(0.01, hold, callback_group=MutuallyExclusiveCallbackGroup())
    node.create_subscription(
        String,
        topic,
        lambda m: received.append(m.data),
        qos,
        callback_group=MutuallyExclusiveCallbackGroup(),
    )
    publisher = node.create_publisher(String, topic, qos)
    executor = make_executor(context)
    executor.add_node(node)
    submits = [0]
    turns = [0]
    counting = [False]
    pool_submit = executor._executor.submit

    def submit(*args: Any, **kwargs: Any) -> Any:
        if counting[0]:
            submits[0] += 1
        return pool_submit(*args, **kwargs)

    executor._executor.submit = submit  # type: ignore[method-assign]
    look_for_work = executor.wait_for_ready_callbacks

    def turn(*args: Any, **kwargs: Any) -> Any:
        if counting[0]:
            turns[0] += 1
        return look_for_work(*args, **kwargs)

    executor.wait_for_ready_callbacks = turn  # type: ignore[method-assign]
    spinning = threading.Event()
    spinning.set()

    def spin() -> None:  # executor.spin(), with a stop that leaves the executor as it is
        while spinning.is_set():
            executor.spin_once(timeout_sec=0.1)  # the 10 ms timer always has work for it

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        wait_for(lambda: node.count_subscribers(topic) > 0, "the subscription", WAIT_S,
                 period_s=0.01)
        wait_for(holding.is_set, "the pool thread to be held", WAIT_S, period_s=0.01)
        counting[0] = True
        for i in range(MESSAGES):
            publisher.publish(String(data=str(i)))
        time.sleep(HOLD_S / 2)  # inside the hold: the messages' task waits for the pool
        counting[0] = False
        wait_for(lambda: len(received) == MESSAGES, "every message", WAIT_S, period_s=0.01)
    finally:
        # The pool must be idle before the executor shuts down: rclpy's shutdown waits for no
        # task and destroys the guard condition each task triggers as it starts, so a task
        # still queued (a timer's, every 10 ms) would fail with InvalidHandle, kept in a future
        # nobody reads ("The following exception was never retrieved: cannot use Destroyable
        # because destruction was requested" when the test process collects it). Stop handing
        # tasks over, then let the single pool thread run everything queued before a no-op.
        spinning.clear()
        spinner.join(timeout=5.0)
        pool_submit(lambda: None).result(timeout=5.0)
        executor.shutdown(timeout_sec=5.0)
        node.destroy_node()
        context.try_shutdown()
    return submits[0], turns[0], received


def test_a_busy_pool_gets_each_task_once_and_every_message_arrives() -> None:
    submits, turns, received = _handovers_while_pool_busy(
        lambda context: PoolExecutor(num_threads=1, context=context)
    )
    assert received == [str(i) for i in range(MESSAGES)]
    # the subscription's task, and at most a timer task, while the pool thread was held
    assert submits <= 3, f"{submits} hand-overs to a busy pool"
    # it waited for the pool: a turn per HANDOVER_WAIT_S at most, and a few for new work
    assert turns <= HOLD_S / 2 / HANDOVER_WAIT_S + 10, f"{turns} turns while the pool was held"


def test_rclpy_executor_resubmits_to_a_busy_pool() -> None:
    # Why PoolExecutor exists: if rclpy stops doing this, the workaround can go.
    submits, _, received = _handovers_while_pool_busy(
        lambda context: MultiThreadedExecutor(num_threads=1, context=context)
    )
    assert received == [str(i) for i in range(MESSAGES)]
    assert submits > 50, f"rclpy handed {submits} tasks over while its pool was busy"
