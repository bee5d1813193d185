"""Helper process of ``test_client_storm.py``: many :class:`QueryClient` s on one node, all
asking at once, as a planner process with several users of the map would.

    python -m tests.diff2scene_ros.query_storm OUT.json --clients 30 --queries 30

Writes ``{"sent", "answered", "timeouts", "warmup_lost"}`` to ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor

from diff2scene_ros.client import QueryClient, QueryTimeoutError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--node-name", default="/diff2scene")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--timeout-s", type=float, default=20.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("query_storm")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    clients = [QueryClient(args.node_name, node=node, timeout_s=args.timeout_s)
               for _ in range(args.clients)]
    for client in clients:
        client.wait_until_available(120.0)
    lock = threading.Lock()
    result = {"sent": 0, "answered": 0, "timeouts": 0, "warmup_lost": 0, "warmup_sent": 0}
    start = threading.Barrier(args.clients)

    def ask(client: QueryClient) -> None:
        # one answered query first: a request sent before the node has matched this client's
        # response reader is answered into the void (discovery, not what is tested here)
        for _ in range(10):
            with lock:
                result["warmup_sent"] += 1
            try:
                client.query("chair", timeout_s=5.0)
                break
            except QueryTimeoutError:
                with lock:
                    result["warmup_lost"] += 1
        start.wait(timeout=120.0)
        for i in range(args.queries):
            with lock:
                result["sent"] += 1
            try:
                client.query(("chair", "", "the table", "x" * 300)[i % 4])
            except QueryTimeoutError:
                with lock:
                    result["timeouts"] += 1
                continue
            with lock:
                result["answered"] += 1

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    args.out.write_text(json.dumps(result))
    for client in clients:
        client.close()
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
