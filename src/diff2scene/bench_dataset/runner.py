"""Scene replays as Ray tasks: where they run, retries, time limits, Ctrl-C.

The driver keeps at most as many tasks submitted as the cluster can run at once (its CPUs
over ``cpus_per_scene``, its GPUs over ``gpus_per_scene``), so a task's time limit counts from
about when it starts rather than from when it was queued. A task that fails or runs past the
limit (cancelled, its worker killed) is submitted again, up to ``retries`` times, behind the
scenes not yet tried; after that its error is the scene's result and the others go on. Ray's
own retries are off, so every attempt is counted here.

On a local machine Ray is started with ``workers`` CPUs, no dashboard and no usage statistics
(about 4 s on 2 cores); with ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``)
the driver joins a running cluster. The workers import diff2scene themselves: every node needs
the same installation, and the output directory at the same path (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from diff2scene.bench_dataset.scenes import SceneOutcome, SceneTask, one_line, replay_scene
from diff2scene.errors import ConfigError

_LOG = logging.getLogger(__name__)

#: How often the driver looks at running tasks for their time limit, seconds.
_POLL_S = 1.0
#: Object store of a local Ray, bytes: tasks exchange only small configs and outcomes, and
#: Ray's default (30 % of memory) is shared memory taken from everyone on a small machine.
_LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024

Status = Literal["done", "failed", "cancelled"]


@dataclass
class RayOptions:
    """Where the scene replays run and what each may use."""

    #: None: start a local Ray; ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``: join that one.
    address: str | None = None
    #: CPUs of the local Ray (how many scenes replay at once with one CPU each).
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: CPUs one scene's task asks for (Ray's ``num_cpus``; the worker's thread count too).
    cpus_per_scene: float = 1.0
    #: GPUs one scene's task asks for; fractions share a GPU between tasks.
    gpus_per_scene: float = 0.0
    #: An attempt running longer is cancelled and counts as failed, seconds; None: no limit.
    timeout_s: float | None = 3600.0
    #: Further attempts after a failure or a timeout.
    retries: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if not self.cpus_per_scene > 0 or self.gpus_per_scene < 0:
            raise ConfigError("--cpus-per-scene must be > 0 and --gpus-per-scene >= 0")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"--timeout-s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")


@contextmanager
def ray_session(options: RayOptions) -> Iterator[dict[str, Any]]:
    """Ray, connected for the duration: a Ray this process already runs is used as it is
    (and left running); otherwise a local one is started, or ``options.address`` joined, and
    shut down at the end. Yields a description of the cluster for the report."""
    import ray

    started = not ray.is_initialized()
    if started:
        # Opt out of the usage-statistics notice unless the user chose otherwise.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if options.address is None:
            ray.init(num_cpus=options.workers, include_dashboard=False,
                     object_store_memory=_LOCAL_OBJECT_STORE_BYTES, **common)  # fmt: skip
        else:
            ray.init(address=options.address, **common)
    try:
        resources = ray.cluster_resources()
        yield {
            "address": options.address or "local",
            "started_here": started,
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "cpus": resources.get("CPU", 0.0),
            "gpus": resources.get("GPU", 0.0),
            "cpus_per_scene": options.cpus_per_scene,
            "gpus_per_scene": options.gpus_per_scene,
            "timeout_s": options.timeout_s,
            "retries": options.retries,
        }
    finally:
        if started:
            ray.shutdown()


def concurrent_slots(options: RayOptions) -> int:
    """How many scene tasks the cluster can run at once (at least one)."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0.0) // options.cpus_per_scene)
    if options.gpus_per_scene > 0:
        slots = min(slots, int(resources.get("GPU", 0.0) // options.gpus_per_scene))
    return max(1, slots)


@dataclass
class SceneResult:
    """A scene's final state after all its attempts."""

    name: str
    status: Status
    #: One entry per attempt: the outcome (``ok`` True for the one that succeeded).
    attempts: list[SceneOutcome] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        """The last attempt's error (None when done)."""
        return None if self.status == "done" or not self.attempts else self.attempts[-1].error


def _failed(task: SceneTask, error: str, started: float) -> SceneOutcome:
    return SceneOutcome(task.scene.name, False, error, None, time.monotonic() - started, "", 0)


def run_scenes(
    tasks: Sequence[SceneTask],
    options: RayOptions,
    *,
    on_result: Callable[[SceneResult], None] | None = None,
) -> tuple[dict[str, SceneResult], bool]:
    """Run every task on the connected Ray (see :func:`ray_session`), retrying as the
    options say. Returns each scene's result by name, and whether the run was interrupted
    (Ctrl-C: the running tasks are cancelled, they and the unstarted ones are "cancelled").
    ``on_result`` is called once per scene, as soon as its result is final."""
    import ray
    from ray.exceptions import RayError

    remote = ray.remote(replay_scene).options(
        num_cpus=options.cpus_per_scene, num_gpus=options.gpus_per_scene, max_retries=0,
        retry_exceptions=False, name="diff2scene-replay-scene",
    )  # fmt: skip
    results: dict[str, SceneResult] = {}
    attempts: dict[str, list[SceneOutcome]] = {t.scene.name: [] for t in tasks}
    pending: deque[SceneTask] = deque(tasks)
    running: dict[Any, tuple[SceneTask, float]] = {}

    def settle(task: SceneTask, outcome: SceneOutcome) -> None:
        name = task.scene.name
        attempts[name].append(outcome)
        if outcome.ok:
            results[name] = SceneResult(name, "done", attempts[name])
        elif len(attempts[name]) <= options.retries:
            _LOG.warning("%s failed (%s); trying it again", name, one_line(outcome.error))
            # Its first attempt may have left outputs: the retry replaces them.
            pending.append(replace(task, force=True))
            return
        else:
            results[name] = SceneResult(name, "failed", attempts[name])
        if on_result is not None:
            on_result(results[name])

    try:
        while pending or running:
            slots = concurrent_slots(options)
            while pending and len(running) < slots:
                task = pending.popleft()
                running[remote.remote(task)] = (task, time.monotonic())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                task, started = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayError as exc:  # the worker died (memory, a crash in native code)
                    first = str(exc).strip().splitlines()
                    outcome = _failed(task, f"{type(exc).__name__}: "
                                      f"{first[0] if first else ''}", started)  # fmt: skip
                settle(task, outcome)
            if options.timeout_s is not None:
                now = time.monotonic()
                for ref, (task, started) in list(running.items()):
                    if now - started > options.timeout_s:
                        ray.cancel(ref, force=True)
                        del running[ref]
                        settle(task, _failed(task, f"TimeoutError: no result after "
                                             f"{options.timeout_s:g} s (cancelled)", started))
    except KeyboardInterrupt:
        for ref, (task, _) in running.items():
            ray.cancel(ref, force=True)
            results[task.scene.name] = SceneResult(task.scene.name, "cancelled",
                                                   attempts[task.scene.name])  # fmt: skip
        for task in pending:
            results[task.scene.name] = SceneResult(task.scene.name, "cancelled",
                                                   attempts[task.scene.name])  # fmt: skip
        return results, True
    return results, False
