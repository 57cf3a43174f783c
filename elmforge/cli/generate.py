"""`elmforge generate MODEL --prompt TEXT | --prompt-file FILE`: stream a continuation."""

from __future__ import annotations

import argparse
import sys

from elmforge.cli.options import (
    add_generation_model_flags,
    add_prompt_flags,
    add_sampling_flags,
    load_generator_from_args,
    read_prompt,
    sampling_options,
)


def write_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def notice(text: str) -> None:
    print(f"[elmforge] {text}", file=sys.stderr, flush=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a continuation of a prompt, streaming tokens",
        description="Load a model and stream a continuation of the prompt (--prompt TEXT, "
        "--prompt-file FILE, or text piped on standard input: read until it closes, so a "
        "pipe that stays open waits; an empty prompt from a file or standard input is refused).",
    )
    add_generation_model_flags(p)
    add_prompt_flags(p)
    add_sampling_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.infer.generate import generate_text

    prompt = read_prompt(args)
    sampling_options(args)  # bad flags fail before the model loads
    loaded, draft = load_generator_from_args(args)
    options = sampling_options(args, draft)
    write_now(prompt)
    generate_text(loaded.model, loaded.tokenizer, prompt, options, on_text=write_now, report=notice)
    sys.stdout.write("\n")
    return 0
