"""`elmforge demo`: the whole lifecycle on the CPU in minutes, on text every Python carries.

Trains a BPE tokenizer on the built-in corpus, pretrains a tiny layer-wise-scaled OpenELM,
averages its last checkpoints, reports validation perplexity of the final and the averaged
model, and generates a continuation. Re-running with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse

from elmforge.config import add_config_flags, overrides_of
from elmforge.demo import DEMO_CONFIG, PROMPT
from elmforge.train.config import RunConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="pretrain, average, evaluate and sample a tiny OpenELM on the CPU (minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="run directory (runs/demo)")
    p.add_argument(
        "--config",
        default=DEMO_CONFIG,
        help=f"run config YAML, or a packaged config's name ({DEMO_CONFIG})",
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="demo tokenizer size (4096)")
    p.add_argument("--average-last", type=int, default=3, help="checkpoints to average (3)")
    p.add_argument("--eval-documents", type=int, default=200, help="validation documents (200)")
    p.add_argument("--prompt", default=PROMPT, help="text to continue at the end")
    # Every run-config key is a flag, as for `elmforge pretrain`.
    add_config_flags(p, RunConfig, "run config overrides (see docs/pretrain.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.demo import run_demo

    run_demo(
        args.out,
        config=args.config,
        overrides=overrides_of(args),
        vocab_size=args.vocab_size,
        average_last=args.average_last,
        eval_documents=args.eval_documents,
        prompt=args.prompt,
        on_text=_print_piece,
    )
    return 0


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)
