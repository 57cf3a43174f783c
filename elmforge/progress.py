"""How long work shows progress, decided in one place.

A tqdm bar (rate, ETA) where a person watches a terminal; plain lines in logs and under CI
(``CI`` set to anything but empty, ``0``, ``false`` or ``no``, as CI services set it). Every bar
in the package asks :func:`interactive`; transformers' own bars (``Loading weights``, ``Writing
model shards``) are switched off around our loads and saves with :func:`quiet_transformers`, and
switched back on after.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

Report = Callable[[str], None]
"""The one name of a message callback: where a library function's progress and notice lines go
(``print`` or :func:`say` on the command line, ``list.append`` in tests)."""


def say(message: str) -> None:
    """The default :data:`Report`: a line on stdout, flushed (long runs' logs are read live)."""
    print(message, flush=True)


def in_ci() -> bool:
    """Whether ``$CI`` says this runs under continuous integration."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def interactive() -> bool:
    """Whether progress should be a live bar: standard error is a terminal and this is not CI."""
    return not in_ci() and sys.stderr.isatty()


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars off for the block, restored to what they were after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
