"""Exceptions shared across the core.

Each subsystem raises a specific subclass so callers can tell bad input (skip and count it)
from a broken installation (stop and tell the user what to fix).
"""

from pathlib import Path


class Diff2SceneError(Exception):
    """Base class of every error raised on purpose by diff2scene."""


class ConfigError(Diff2SceneError):
    """A configuration file or value is malformed, unknown or out of range."""


class InputError(Diff2SceneError):
    """One input item (frame, message, query) is unusable; callers skip it and count why.

    ``stamp_ns``: the stamp of the message it is about, when it has one, so that whoever counts
    the refusal can say which message it was.
    """

    def __init__(self, reason: str, detail: str = "", *, stamp_ns: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.stamp_ns = stamp_ns
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DataFormatError(Diff2SceneError):
    """A file (bag, map, dataset, checkpoint) is corrupt, truncated or of the wrong version."""


class WeightsUnavailableError(Diff2SceneError):
    """Model weights cannot be found locally and cannot be downloaded."""


#: How to run without any weights; appended to every :class:`MissingWeightsError`.
DRY_RUN_HINT = "For a dry run with random weights instead, set `segmenter.profile: tiny`."


class MissingWeightsError(WeightsUnavailableError):
    """A weight file a model profile needs is not on this machine.

    ``path`` is the file (or the directory or cache folder that lacks it); the message names
    it, says how to make or fetch it, and ends with :data:`DRY_RUN_HINT`, so a user without
    the weights always learns the one setting that runs anyway.
    """

    def __init__(self, message: str, *, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{message} {DRY_RUN_HINT}")


class NotAMapError(DataFormatError):
    """A file offered as a map is something else (text, a pickle, an unrelated archive)."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        super().__init__(f"{path} is not a diff2scene map: {why}")


class MapPathError(Diff2SceneError):
    """A map path from a request is refused: it leaves the map directory, names something that
    must not be overwritten, or is malformed. ``why`` says which rule it broke."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        self.why = why
        shown = path if len(path) <= 120 else path[:117] + "..."
        super().__init__(f"map path {shown!r} refused: {why}")
