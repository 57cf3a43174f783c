"""`elmforge data inspect CONFIG [--json]`: what the data pipeline makes of a config's sources."""

from __future__ import annotations

import argparse
import json

from elmforge.cli.arg_types import non_negative_int, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="inspect the pretraining data a config describes",
        description="Data-pipeline tools.",
    )
    verbs = p.add_subparsers(dest="data_verb", metavar="SUBCOMMAND")
    verbs.required = True
    q = verbs.add_parser(
        "inspect",
        help="per-source documents, filter drops, tokens, sequences and padding fraction",
        description="Read the sources of a YAML file's `data:` section once and report, per "
        "source: documents kept, dropped_min_characters, dropped_min_tokens, bad rows, tokens, "
        "sequences and the padding fraction, with a few decoded sequences.",
    )
    q.add_argument("config", metavar="CONFIG", help="YAML file with a `data:` section")
    q.add_argument("--json", action="store_true", help="print one JSON object (no samples)")
    q.add_argument(
        "--max-documents", type=positive_int, metavar="N", help="read at most N rows per source"
    )
    q.add_argument("--split", default="train", choices=["train", "validation"])
    q.add_argument(
        "--samples", type=non_negative_int, default=2, metavar="N", help="decoded sequences to show"
    )
    q.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.data.config import load_data_config
    from elmforge.data.inspect import format_inspect_report, inspect

    config = load_data_config(args.config)
    samples = 0 if args.json else args.samples
    report = inspect(config, args.max_documents, split=args.split, samples=samples)
    if args.json:
        for source in report["sources"]:
            source.pop("samples", None)
        print(json.dumps(report, indent=2))
    else:
        print(format_inspect_report(report), end="")
    return 0
