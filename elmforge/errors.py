"""Errors that the CLI reports as one line (no traceback)."""

from __future__ import annotations


class ElmforgeError(Exception):
    """A user-facing failure: bad input, a missing or corrupt file, an impossible request.

    The message must name the file (or field) and the problem, in one line. A message about one
    parameter says ``{option}`` where it names it and passes ``option`` (its Python name): raised
    from Python the message names the parameter (``batch_size 0: must be >= 1``), while the
    ``elmforge`` command prints :meth:`for_command_line`, which names the flag instead
    (``--batch-size 0: must be >= 1``); ``flag`` is given where it is not ``--`` + the name with
    dashes.
    """

    def __init__(self, message: str = "", *, option: str | None = None, flag: str | None = None):
        self.template = message
        self.option = option
        self.flag = flag or ("--" + option.replace("_", "-") if option else None)
        super().__init__(message.replace("{option}", option) if option else message)

    def for_command_line(self) -> str:
        """The message as the ``elmforge`` command prints it."""
        if self.option is None or self.flag is None:
            return str(self)
        return self.template.replace("{option}", self.flag)

    def __reduce__(self) -> tuple:  # pickled whatever a subclass's constructor takes
        return _restore, (type(self), self.template, self.option, self.flag)


def _restore(cls: type, template: str, option: str | None, flag: str | None) -> ElmforgeError:
    error = cls.__new__(cls)
    ElmforgeError.__init__(error, template, option=option, flag=flag)
    return error


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
    """A bad value of one parameter (see :class:`ElmforgeError` for ``{option}``)."""

    def __init__(self, option: str, template: str, flag: str | None = None) -> None:
        super().__init__(template, option=option, flag=flag)


def invalid_text(text: str) -> str | None:
    """Why ``text`` cannot be tokenised, or None: a byte of the command line or of standard input
    that was not UTF-8 reaches Python as a lone surrogate (as does ``"\\ud800"`` in JSON), which
    tokenizers reject with a traceback."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])
        what = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return f"not valid UTF-8 text ({what} at position {err.start})"
    return None
