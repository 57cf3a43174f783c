"""Flags shared by the verbs that run a model: which model and how to load it, sampling, prompts.

Kept light (argparse and the standard library): the CLI builds every verb's parser before it
imports torch. :func:`load_options` is the one place the model flags become keywords of
:func:`elmforge.modeldir.loading.load` (which ``load_and_evaluate`` and the other library entry
points pass on), so a flag added to :func:`add_model_flags` (say ``--adapter DIR``, the loader
already takes ``adapter=``) is one ``add_argument`` there and one entry here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError, invalid_text
from elmforge.runtime import DTYPE_CHOICES


def add_model_flags(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    """MODEL, --tokenizer, --device, --dtype."""
    p.add_argument(
        "model",
        metavar="MODEL",
        nargs=None if model_required else "?",
        help="model directory (HF layout), training checkpoint directory or hub name",
    )
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.model, tokenizer directory or hub name (default: the model's own)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:1, mps (auto)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="weights dtype (auto: float32 on the CPU, bfloat16 on a GPU)",
    )


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`elmforge.modeldir.loading.load` that the model flags give."""
    return {"tokenizer": args.tokenizer, "device": args.device, "dtype": args.dtype}


def add_generation_model_flags(p: argparse.ArgumentParser, named_adapters: bool = False) -> None:
    """The model flags plus what the verbs that generate also take: --adapter and the
    speculative-decoding flags. ``named_adapters``: --adapter repeats as NAME=DIR (serve)."""
    add_model_flags(p)
    if named_adapters:
        p.add_argument(
            "--adapter",
            metavar="[NAME=]DIR",
            action="append",
            help="PEFT adapter directory, merged at load; or NAME=DIR, repeatable: served "
            "unmerged over the base, a request's model picks one",
        )
    else:
        p.add_argument("--adapter", metavar="DIR", help="PEFT adapter directory, merged at load")
    p.add_argument(
        "--prompt-lookup",
        type=int,
        metavar="N",
        help="speculative decoding: propose N tokens copied from the prompt (batch 1)",
    )
    p.add_argument(
        "--draft-model",
        metavar="DIR",
        help="speculative decoding: a smaller model with the same tokenizer proposes tokens",
    )


def load_generator_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """(LoadedModel, draft model or None) the flags of :func:`add_generation_model_flags`
    describe."""
    from elmforge.infer.generate import load_generator

    return load_generator(args.model, **generation_load_options(args))


def generation_load_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`load_options` plus the adapter and the draft model."""
    return {**load_options(args), "adapter": args.adapter, "draft_model": args.draft_model}


def add_sampling_flags(p: argparse.ArgumentParser, max_new_tokens: int = 64) -> None:
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=f"tokens to generate at most ({max_new_tokens})",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest (50)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (0.95)")
    p.add_argument("--min-p", type=float, help="drop tokens below min-p x the top probability")
    p.add_argument("--repetition-penalty", type=float, help="CTRL's penalty (1: off)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (deterministic)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the output where TEXT appears (not included); repeatable",
    )


def sampling_options(args: argparse.Namespace, draft_model: Any = None) -> Any:
    """The checked :class:`~elmforge.infer.generate.SamplingOptions` the sampling (and
    speculative) flags describe."""
    from elmforge.infer.generate import SamplingOptions, check_speculative

    # Before the model loads (the draft model is still a path here).
    check_speculative(getattr(args, "prompt_lookup", None), getattr(args, "draft_model", None))
    return SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        greedy=args.greedy,
        seed=args.seed,
        stop=tuple(args.stop),
        prompt_lookup=getattr(args, "prompt_lookup", None),
        draft_model=draft_model,
    ).check()


STDIN_RULE = (
    "with neither, standard input is read until it closes (end of file) when it is not a "
    "terminal; an empty prompt from a file or standard input is refused"
)


def add_prompt_flags(p: argparse.ArgumentParser) -> None:
    """--prompt TEXT or --prompt-file FILE (``-``: standard input); with neither, a prompt piped
    on standard input is read (:data:`STDIN_RULE`)."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", metavar="TEXT", help="the text to continue")
    source.add_argument(
        "--prompt-file",
        metavar="FILE",
        help=f"read the prompt from FILE (UTF-8; '-' reads standard input); {STDIN_RULE}",
    )


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt the prompt flags give (see :func:`add_prompt_flags`), exactly as written."""
    if args.prompt is not None:
        # A byte that is not UTF-8 on the command line reaches Python as a lone surrogate.
        problem = invalid_text(args.prompt)
        if problem:
            raise ElmforgeError(f"--prompt: {problem}")
        return args.prompt
    if args.prompt_file is None and sys.stdin.isatty():
        raise ElmforgeError("give --prompt TEXT, --prompt-file FILE or a prompt on standard input")
    if args.prompt_file in (None, "-"):
        where, data = "standard input", sys.stdin.buffer.read()
    else:
        where = f"--prompt-file {args.prompt_file}"
        try:
            data = Path(args.prompt_file).read_bytes()
        except OSError as err:
            raise ElmforgeError(f"{where}: cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ElmforgeError(
            f"{where}: the prompt is not UTF-8 text (byte {err.start}: {data[err.start]:#04x})"
        ) from None
    if not text:  # /dev/null, an empty file, a pipe that closed before writing anything
        raise ElmforgeError(
            f"{where}: the prompt is empty; give --prompt TEXT, --prompt-file FILE or pipe the "
            "prompt on standard input"
        )
    return text
