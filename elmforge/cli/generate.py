"""`elmforge generate MODEL_DIR --prompt ...`: stream a continuation."""

from __future__ import annotations

import argparse
import sys

from elmforge.infer.generate import SamplingOptions, generate_text, load_model_and_tokenizer
from elmforge.infer.loading import DTYPE_CHOICES


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (64)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest (50)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (0.95)")
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (deterministic)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_DIR", help="model directory (HF layout)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.model / tokenizer dir")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (auto)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="weights dtype (auto: float32 on CPU, bfloat16 on a GPU)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate a continuation of a prompt, streaming tokens",
        description="Load an OpenELM model directory and stream a continuation of --prompt.",
    )
    add_model_flags(p)
    p.add_argument("--prompt", required=True, help="the text to continue")
    add_sampling_flags(p)
    p.set_defaults(run=run)


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    return SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device, args.dtype)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    generate_text(model, tokenizer, args.prompt, sampling_options(args), on_text=write)
    sys.stdout.write("\n")
    return 0
