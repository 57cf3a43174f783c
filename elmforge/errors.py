"""Errors that the CLI reports as one line (no traceback)."""

from __future__ import annotations


class ElmforgeError(Exception):
    """A user-facing failure: bad input, a missing or corrupt file, an impossible request.

    The message must name the file (or field) and the problem, in one line.
    """

    def for_command_line(self) -> str:
        """The message as the ``elmforge`` command prints it."""
        return str(self)


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


class OptionError(ConfigError):
    """A bad value of one parameter, named where the message says ``{option}``.

    Raised from Python the message names the parameter (``batch_size 0: must be >= 1``); the
    ``elmforge`` command prints :meth:`for_command_line`, which names the flag instead
    (``--batch-size 0: must be >= 1``). ``flag`` is given where it is not ``--`` + the name with
    dashes.
    """

    def __init__(self, option: str, template: str, flag: str | None = None) -> None:
        self.option = option
        self.template = template
        self.flag = flag or "--" + option.replace("_", "-")
        super().__init__(template.replace("{option}", option))

    def for_command_line(self) -> str:
        return self.template.replace("{option}", self.flag)
