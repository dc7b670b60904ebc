"""User-facing errors.

Anything a user can cause (a bad YAML key, a missing file, a malformed data row) is raised as a
:class:`DistatError` whose message is one line that names the culprit. The CLI prints it as
``distat: error: <message>`` and exits with status 2; nothing else in the package prints.
"""

from __future__ import annotations


class DistatError(Exception):
    """An error caused by the user's input; its message is one self-contained line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(DistatError):
    """A configuration file or value is invalid."""


class DataError(DistatError):
    """A dataset is missing, unreadable or malformed."""


class ModelError(DistatError):
    """A backbone or checkpoint cannot be loaded."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
