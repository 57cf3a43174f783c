"""Errors that the CLI reports as one line (no traceback)."""

from __future__ import annotations


class ElmforgeError(Exception):
    """A user-facing failure: bad input, a missing or corrupt file, an impossible request.

    The message must name the file (or field) and the problem, in one line.
    """


class ConfigError(ElmforgeError, ValueError):
    """A configuration value is invalid; the message names the field."""


class CheckpointError(ElmforgeError):
    """A checkpoint file or directory is missing, corrupt or truncated."""


class DataError(ElmforgeError):
    """A data source, shard or row cannot be read."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (its type when empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
