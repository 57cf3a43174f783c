"""argparse types for numeric flags: a bad value is a usage error naming the flag (exit 2), not a
traceback later (``islice`` on ``--max-documents -1``, ``[-0:]`` on ``--average-last 0``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def comma_list(kind: Callable[[str], Any] = str) -> Callable[[str], tuple]:
    """The argparse type of a comma-separated flag (``--batch 1,4,8``, ``--tasks arc_easy,piqa``):
    a tuple of ``kind(item)``. An empty item (``1,,2``, a trailing comma) is refused rather than
    skipped: it is a typo, and skipping it silently runs something other than what was asked."""

    def parse(text: str) -> tuple:
        items = [part.strip() for part in text.split(",")]
        if "" in items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list without empty items, got {text!r}"
            )
        try:
            return tuple(kind(item) for item in items)
        except ValueError:
            name = getattr(kind, "__name__", "value")
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {name} values, got {text!r}"
            ) from None

    return parse
