"""`elmforge tokenizer train --data CONFIG_OR_SOURCE --vocab-size N --out DIR` and
`elmforge tokenizer install PATH` (LLaMA-2's tokenizer.model into the user cache)."""

from __future__ import annotations

import argparse

from elmforge.cli.arg_types import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train a BPE tokenizer on configured data; install LLaMA-2's tokenizer.model",
        description="Tokenizer tools.",
    )
    verbs = p.add_subparsers(dest="tokenizer_verb", metavar="SUBCOMMAND")
    verbs.required = True
    q = verbs.add_parser(
        "train",
        help="train a byte-level BPE tokenizer (Hugging Face format) on a data config or source",
        description="Train a byte-level BPE tokenizer with the `tokenizers` library on the "
        "documents of a YAML data config's sources or of one source (builtin:python-stdlib, "
        "builtin:python-docs, a file or glob, hf:org/name) and save it in the Hugging Face "
        "format; use the directory as `data.tokenizer`.",
    )
    q.add_argument(
        "--data", required=True, metavar="CONFIG_OR_SOURCE", help="YAML config or source"
    )
    q.add_argument("--vocab-size", type=int, required=True, metavar="N", help="vocabulary size")
    q.add_argument("--out", required=True, metavar="DIR", help="output directory")
    q.add_argument(
        "--force", action="store_true", help="replace an earlier `tokenizer train` output at DIR"
    )
    q.add_argument(
        "--max-documents", type=positive_int, metavar="N", help="train on the first N documents"
    )
    q.add_argument("--split", default="train", choices=["train", "validation"])
    q.set_defaults(run=run)
    install = verbs.add_parser(
        "install",
        help="copy LLaMA-2's tokenizer.model into the user cache, where every verb finds it",
        description="Check that PATH is LLaMA-2's SentencePiece model (32000 pieces) and copy it "
        "to the user cache ($XDG_CACHE_HOME/elmforge/llama2-tokenizer.model, by default "
        "~/.cache/elmforge/), the place elmforge looks after --tokenizer / data.tokenizer and "
        "$ELMFORGE_LLAMA2_TOKENIZER.",
    )
    install.add_argument("path", metavar="PATH", help="LLaMA-2's tokenizer.model")
    install.add_argument("--force", action="store_true", help="replace a different installed one")
    install.set_defaults(run=run_install)


def run(args: argparse.Namespace) -> int:
    from elmforge.data.tokenizer import train_tokenizer_output
    from elmforge.data.tokenizer_choice import iter_training_texts

    texts = iter_training_texts(args.data, args.split, args.max_documents)
    tokenizer = train_tokenizer_output(texts, args.vocab_size, args.out, force=args.force)
    print(f"tokenizer: {len(tokenizer)} tokens, saved to {args.out}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from elmforge.data.tokenizer import install_llama2_tokenizer

    print(f"installed: {install_llama2_tokenizer(args.path, force=args.force)}")
    return 0
