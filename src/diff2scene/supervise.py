"""Supervised stages: one failing stage is counted, reported and, if it keeps failing, switched
off — it never takes the process, a worker thread or the rest of the map down with it.

A mapping node runs for hours on a robot. A model that raises on one keyframe (out of memory,
a driver hiccup, a bug on a rare input) must cost that keyframe and nothing else; a model that
raises on *every* keyframe must not fill the log with tracebacks or burn the CPU forever. So
each stage (fusion, the 2D model, unprojection, the 3D network, ...) runs its items through a
:class:`Stage`:

- an exception at the stage boundary is caught and counted by its type;
- the first exception of each type is logged with its traceback, later ones are only counted
  (their count and the last message stay in :meth:`Stage.status`);
- after ``max_consecutive_failures`` failures in a row the stage is switched off: its items
  are skipped (and counted) until :meth:`Stage.enable` is called, while the other stages go on;
- errors that mean "this one item is unusable" (:class:`~diff2scene.errors.InputError`) are
  counted by reason and skip the item, but are no sign of a broken stage: they neither count
  towards switching it off nor log a traceback.

:meth:`StageSupervisor.status` gives every stage's state for a health report (the ROS node
publishes it on ``/diagnostics``). Only :class:`Exception` is caught: ``KeyboardInterrupt`` and
``SystemExit`` still end the program.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from diff2scene.errors import ConfigError, InputError

_LOG = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

StageState = Literal["ok", "failing", "disabled"]


@dataclass
class SupervisorConfig:
    """When a failing stage is given up on."""

    #: Failures in a row after which a stage is switched off (its items are then skipped and
    #: counted); a single success resets the run. Bad-input errors do not count.
    max_consecutive_failures: int = 20

    def __post_init__(self) -> None:
        if self.max_consecutive_failures < 1:
            raise ConfigError("SupervisorConfig.max_consecutive_failures must be >= 1")


@dataclass(frozen=True)
class Failure:
    """What a supervised call returns instead of a value when its item was not processed."""

    stage: str
    #: Counting key: the exception's type name, an InputError's reason, or "<stage>_disabled".
    key: str
    #: The exception caught; None when the stage was switched off and the item skipped.
    error: Exception | None = None


@dataclass(frozen=True)
class StageStatus:
    """One stage's health, as a health report shows it."""

    name: str
    #: "ok" (last item succeeded, or none failed), "failing" (the last item(s) failed),
    #: "disabled" (switched off after too many failures in a row).
    state: StageState
    #: Items that completed.
    successes: int
    #: Items lost to an exception (bad-input skips not included).
    failures: int
    #: Failures since the last success.
    consecutive_failures: int
    #: Items skipped as unusable input (InputError), by reason.
    skipped_inputs: dict[str, int]
    #: Items skipped because the stage was switched off.
    skipped_disabled: int
    #: Failures by exception type name.
    errors: dict[str, int]
    #: "<Type>: <message>" of the most recent failure, "" if none.
    last_error: str
    #: Why the stage is switched off, "" while it runs.
    disabled_reason: str

    def as_dict(self) -> dict[str, str]:
        """Flat string key/values (diagnostic key-value pairs)."""
        out = {
            "state": self.state,
            "successes": str(self.successes),
            "failures": str(self.failures),
            "consecutive_failures": str(self.consecutive_failures),
            "skipped_disabled": str(self.skipped_disabled),
            "last_error": self.last_error,
            "disabled_reason": self.disabled_reason,
        }
        out.update({f"errors_{k}": str(v) for k, v in sorted(self.errors.items())})
        out.update({f"skipped_{k}": str(v) for k, v in sorted(self.skipped_inputs.items())})
        return out


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Stage:
    """One supervised stage. Thread-safe: items may run in one thread and :meth:`status` be
    read from another."""

    def __init__(
        self,
        name: str,
        *,
        max_consecutive_failures: int = 20,
        logger: logging.Logger = _LOG,
    ) -> None:
        if max_consecutive_failures < 1:
            raise ConfigError(f"stage {name}: max_consecutive_failures must be >= 1")
        self.name = name
        self.max_consecutive_failures = max_consecutive_failures
        self._log = logger
        self._lock = threading.Lock()
        self._successes = 0
        self._consecutive = 0
        self._errors: Counter[str] = Counter()
        self._skipped_inputs: Counter[str] = Counter()
        self._skipped_disabled = 0
        self._last_error = ""
        self._disabled_reason = ""

    @property
    def enabled(self) -> bool:
        return not self._disabled_reason

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T | Failure:
        """``fn(*args, **kwargs)``, or a :class:`Failure` if it raised or the stage is off.

        Callers test ``isinstance(result, Failure)``; a function may return None like any value.
        """
        if not self.enabled:
            return self.skip_disabled()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:  # the stage boundary: nothing gets past it
            return self.record_failure(exc)
        self.record_success()
        return value

    def skip_disabled(self) -> Failure:
        """Count an item skipped because the stage is off (for callers that check
        :attr:`enabled` themselves)."""
        with self._lock:
            self._skipped_disabled += 1
        return Failure(self.name, f"{self.name}_disabled")

    def record_success(self) -> None:
        """Note a completed item (for code that runs the stage's work inline, not via
        :meth:`call`)."""
        with self._lock:
            self._successes += 1
            self._consecutive = 0

    def record_failure(self, exc: Exception) -> Failure:
        """Count, log once per type, and maybe switch off the stage for ``exc``."""
        if isinstance(exc, InputError):
            with self._lock:
                first = self._skipped_inputs[exc.reason] == 0
                self._skipped_inputs[exc.reason] += 1
            if first:  # later ones are counted only
                self._log.warning("%s: item skipped: %s (further ones counted)", self.name, exc)
            return Failure(self.name, exc.reason, exc)
        key = type(exc).__name__
        with self._lock:
            first = self._errors[key] == 0
            self._errors[key] += 1
            self._consecutive += 1
            self._last_error = _describe(exc)
            disable = self.enabled and self._consecutive >= self.max_consecutive_failures
            if disable:
                self._disabled_reason = (
                    f"switched off after {self._consecutive} failures in a row; "
                    f"last: {self._last_error}"
                )
        if first:
            self._log.error(
                "%s failed: %s (logged once; further %s errors are counted in the stage status)",
                self.name, _describe(exc), key, exc_info=exc,
            )
        if disable:
            self._log.error("stage %s %s", self.name, self._disabled_reason)
        return Failure(self.name, key, exc)

    def enable(self) -> None:
        """Switch the stage back on (e.g. after its model was reloaded); counts are kept."""
        with self._lock:
            if self._disabled_reason:
                self._log.warning("stage %s switched back on", self.name)
            self._disabled_reason = ""
            self._consecutive = 0

    def status(self) -> StageStatus:
        with self._lock:
            state: StageState
            if self._disabled_reason:
                state = "disabled"
            elif self._consecutive:
                state = "failing"
            else:
                state = "ok"
            return StageStatus(
                name=self.name,
                state=state,
                successes=self._successes,
                failures=sum(self._errors.values()),
                consecutive_failures=self._consecutive,
                skipped_inputs=dict(self._skipped_inputs),
                skipped_disabled=self._skipped_disabled,
                errors=dict(self._errors),
                last_error=self._last_error,
                disabled_reason=self._disabled_reason,
            )


@dataclass
class StageSupervisor:
    """The stages of one component, created on first use with a shared config."""

    config: SupervisorConfig = field(default_factory=SupervisorConfig)
    logger: logging.Logger = _LOG
    _stages: dict[str, Stage] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def stage(self, name: str) -> Stage:
        with self._lock:
            found = self._stages.get(name)
            if found is None:
                found = Stage(
                    name,
                    max_consecutive_failures=self.config.max_consecutive_failures,
                    logger=self.logger,
                )
                self._stages[name] = found
            return found

    def status(self) -> dict[str, StageStatus]:
        """Every stage's status by name, in the order the stages were first used."""
        with self._lock:
            stages = list(self._stages.values())
        return {s.name: s.status() for s in stages}

    def summary(self) -> dict[str, Any]:
        """Flat numbers for a stats dump: ``stage_<name>_{state,failures,...}``."""
        out: dict[str, Any] = {}
        for name, st in self.status().items():
            out[f"stage_{name}_state"] = st.state
            out[f"stage_{name}_failures"] = st.failures
            out[f"stage_{name}_skipped_disabled"] = st.skipped_disabled
        return out
