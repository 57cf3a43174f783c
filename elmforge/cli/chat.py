"""`elmforge chat MODEL`: a multi-turn conversation in the terminal, streamed.

When stdin is not a terminal each line is one message (or command), so chats can be scripted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from elmforge.cli.generate import notice, write_now
from elmforge.cli.options import (
    add_generation_model_flags,
    add_sampling_flags,
    load_generator_from_args,
    sampling_options,
)
from elmforge.errors import ElmforgeError, invalid_text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal (streaming, multi-turn)",
        description=(
            "Chat with a model directory. The model's own chat template is used if its "
            "tokenizer files carry one, else Apple's OpenELM-Instruct template. Commands: "
            "/reset, /system TEXT, /quit. Old turns are dropped (with a notice) when the "
            "conversation outgrows the context. Reads one message per line from a pipe."
        ),
    )
    add_generation_model_flags(p)
    p.add_argument("--system", metavar="TEXT", help="system message to start with")
    p.add_argument(
        "--show-prompt",
        action="store_true",
        help="print each rendered prompt (template applied) to stderr before the reply",
    )
    add_sampling_flags(p, max_new_tokens=256)
    p.set_defaults(run=run)


def _terminal_lines() -> Iterator[str]:
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        problem = invalid_text(line)
        if problem:  # a terminal not in UTF-8: say so and let the user type again
            notice(f"that line is {problem}; type it again")
            continue
        yield line


def _piped_lines() -> Iterator[str]:
    """Standard input's lines, read as bytes and decoded here: a line that is not UTF-8 is a
    one-line error naming it (Python's own decoding would raise, or pass lone surrogates on to
    the tokenizer, depending on the locale)."""
    for number, data in enumerate(sys.stdin.buffer, start=1):
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ElmforgeError(
                f"standard input line {number}: not UTF-8 text "
                f"(byte {data[err.start]:#04x} at position {err.start})"
            ) from None


def run(args: argparse.Namespace) -> int:
    from elmforge.infer.chat import COMMANDS_HELP, chat_loop

    sampling_options(args)  # bad flags fail before the model loads
    loaded, draft = load_generator_from_args(args)
    options = sampling_options(args, draft)
    interactive = sys.stdin.isatty()
    if interactive:
        notice(f"chatting with {loaded.name}; {COMMANDS_HELP}")

    def show_prompt(text: str) -> None:
        print(f"[elmforge] prompt:\n{text}", file=sys.stderr, flush=True)

    chat_loop(
        loaded.model,
        loaded.tokenizer,
        options,
        _terminal_lines() if interactive else _piped_lines(),
        write=write_now,
        report=notice,
        system=args.system,
        show_prompt=show_prompt if args.show_prompt else None,
    )
    return 0
