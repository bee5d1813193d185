"""Exceptions shared across the core.

Each subsystem raises a specific subclass so callers can tell bad input (skip and count it)
from a broken installation (stop and tell the user what to fix).
"""


class Diff2SceneError(Exception):
    """Base class of every error raised on purpose by diff2scene."""


class ConfigError(Diff2SceneError):
    """A configuration file or value is malformed, unknown or out of range."""


class InputError(Diff2SceneError):
    """One input item (frame, message, query) is unusable; callers skip it and count why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DataFormatError(Diff2SceneError):
    """A file (bag, map, dataset, checkpoint) is corrupt, truncated or of the wrong version."""


class WeightsUnavailableError(Diff2SceneError):
    """Model weights cannot be found locally and cannot be downloaded."""
