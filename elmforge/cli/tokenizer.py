"""`elmforge tokenizer train --data CONFIG_OR_SOURCE --vocab-size N --out DIR`."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train a BPE tokenizer on configured data",
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
    q.add_argument("--max-documents", type=int, metavar="N", help="train on the first N documents")
    q.add_argument("--split", default="train", choices=["train", "validation"])
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.data.tokenizer import train_bpe_tokenizer
    from elmforge.data.tokenizer_choice import iter_training_texts

    texts = iter_training_texts(args.data, args.split, args.max_documents)
    tokenizer = train_bpe_tokenizer(texts, args.vocab_size, args.out)
    print(f"tokenizer: {len(tokenizer)} tokens, saved to {args.out}")
    return 0
