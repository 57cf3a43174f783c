"""`elmforge prepare MODEL_DIR [--tokenizer PATH] [--out DIR]`: make a model directory complete."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="complete a bare model directory (tokenizer, generation config, chat template)",
        description="Add what Apple's hub repositories leave out, so that transformers, mlx-lm, "
        "llama.cpp's converter and every elmforge verb work with no extra flags: LLaMA-2's "
        "tokenizer as an exact fast tokenizer (tokenizer.json) plus tokenizer.model, "
        "generation_config.json and, for -Instruct models, Apple's chat template. In place, or "
        "into a complete copy with --out.",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="model directory (config.json + weights)")
    p.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer.model or tokenizer dir (default: the directory's own, else LLaMA-2's "
        "from $ELMFORGE_LLAMA2_TOKENIZER or the user cache: `elmforge tokenizer install PATH`)",
    )
    p.add_argument("--out", metavar="DIR", help="write a complete copy here instead")
    p.add_argument("--force", action="store_true", help="replace an earlier --out of prepare")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.export.prepare import completeness, prepare_model_dir

    out = prepare_model_dir(args.model, out=args.out, tokenizer=args.tokenizer, force=args.force)
    present = [name for name, there in completeness(out).items() if there]
    print(f"{out}: complete ({', '.join(present)})")
    return 0
