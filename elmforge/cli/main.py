"""Entry point of the `elmforge` command.

Each verb lives in its own module ``elmforge.cli.<module>`` exposing ``add_parser(subparsers)``
(registers the verb and its flags) and ``run(args) -> int``. Verb modules only parse and call one
library function, so tests can call the library directly. Verbs that train take dotted run-config
overrides through the flags :func:`elmforge.config.add_config_flags` generates.

Parse first, import after: every verb's parser is built on each start, so verb modules import
only argparse, the standard library and light elmforge modules at their top (the config kit and
schemas, ``cli.options``), and import torch, transformers and the library inside ``run``.
``--help`` and usage errors then take a fraction of a second instead of torch's import time
(tests/core/test_startup.py holds this).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from elmforge import __version__
from elmforge.errors import ElmforgeError
from elmforge.files import DISK_ERRNOS

# verb -> module under elmforge.cli (each defines add_parser and the verb's run).
VERB_MODULES: dict[str, str] = {
    "demo": "demo",
    "info": "info",
    "generate": "generate",
    "convert": "convert",
    "data": "data",
    "tokenizer": "tokenizer",
    "pretrain": "pretrain",
    "average": "average",
    "evaluate": "evaluate",
    "finetune": "finetune",
    "merge-adapter": "finetune",
    "chat": "chat",
    "serve": "serve",
    "prepare": "prepare",
    "bench": "bench",
    "study": "study",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elmforge",
        description="OpenELM models: define, pretrain, evaluate, fine-tune, run, convert.",
    )
    parser.add_argument("--version", action="version", version=f"elmforge {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for module_name in dict.fromkeys(VERB_MODULES.values()):
        importlib.import_module(f"elmforge.cli.{module_name}").add_parser(subparsers)
    _refuse_abbreviations(parser)
    return parser


def subcommand_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(words, parser) for ``parser`` and every sub-command parser under it, depth first
    (``("convert", "hf-to-gguf")``); aliases are not repeated."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield from subcommand_parsers(child, (*prefix, name))


def _refuse_abbreviations(parser: argparse.ArgumentParser) -> None:
    """`--optim.l 7e-3` must not silently mean `--optim.lr`, nor `convert ... --forc` mean
    `--force`: on every parser, sub-commands' included, an unknown flag is an error."""
    for _, each in subcommand_parsers(parser):
        each.allow_abbrev = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _exit_on_sigterm()
    try:
        return int(args.run(args) or 0)
    except ElmforgeError as err:
        # Expected failures (bad input, missing files) get one line, never a traceback.
        print(f"elmforge {args.verb}: error: {err.for_command_line()}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        # A full disk met by a write that has no handler of its own (a log line, an event file).
        from elmforge.files import disk_error

        message = disk_error(err.filename or "writing", err)
        print(f"elmforge {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elmforge {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `elmforge ... | head` closes stdout early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise SystemExit(128 + signum)


def _exit_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, a scheduler's time limit, torchrun stopping its workers) unwind
    like Ctrl-C: ``finally`` blocks and context managers run, so temporaries (a bench's
    converted weights, a half-written output) are removed. Returns the handler to restore, or
    None where none was installed (not the main thread, or someone else's handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _terminated)


if __name__ == "__main__":
    sys.exit(main())
