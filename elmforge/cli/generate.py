"""`elmforge generate MODEL --prompt TEXT | --prompt-file FILE`: stream a continuation."""

from __future__ import annotations

import argparse
import sys

from elmforge.cli.options import (
    add_model_flags,
    add_prompt_flags,
    add_sampling_flags,
    load_model_from_args,
    read_prompt,
    sampling_options,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a continuation of a prompt, streaming tokens",
        description="Load a model and stream a continuation of the prompt (--prompt TEXT, "
        "--prompt-file FILE, or text piped on standard input).",
    )
    add_model_flags(p)
    add_prompt_flags(p)
    add_sampling_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.infer.generate import generate_text

    prompt = read_prompt(args)
    options = sampling_options(args)
    loaded = load_model_from_args(args)
    sys.stdout.write(prompt)
    sys.stdout.flush()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate_text(loaded.model, loaded.tokenizer, prompt, options, on_text=write)
    sys.stdout.write("\n")
    return 0
