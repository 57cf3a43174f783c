"""`elmforge average CKPT... --out DIR` / `--last N RUN_DIR`: average checkpoints' weights."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "average",
        help="average the weights of several checkpoints (the paper's final models)",
        description="Write the element-wise mean of several checkpoints' weights as an HF-layout "
        "model directory. Give model or checkpoint directories, or --last N and one run "
        "directory to average its N newest intact checkpoints.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="checkpoints, or one run directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier `elmforge average` output at DIR"
    )
    p.add_argument(
        "--last", type=int, metavar="N", help="average the N newest checkpoints of RUN_DIR"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.train.checkpoint import average_command

    out, paths = average_command(args.paths, args.out, last=args.last, force=args.force)
    print(f"averaged {len(paths)} checkpoints into {out}:")
    for path in paths:
        print(f"  {path}")
    return 0
