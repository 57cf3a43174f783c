"""`elmforge info NAME_OR_DIR`: the per-layer table of a preset or a model directory."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="per-layer heads, FFN width and parameters of a preset or model directory",
        description="Show the layer-wise scaling of an OpenELM preset (OpenELM-270M, -450M, "
        "-1_1B, -3B, -tiny) or of a model directory's config.json.",
    )
    p.add_argument("model", metavar="NAME_OR_DIR", help="preset name or model directory")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG of the layer-wise profile")
    p.add_argument("--force", action="store_true", help="replace an existing --plot file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.model.profile import plot_profile, profile_markdown, resolve_config, rows_as_dicts

    config = resolve_config(args.model)
    if args.json:
        print(
            json.dumps(
                {
                    "layers": rows_as_dicts(config),
                    "total_parameters": config.num_parameters_total(),
                },
                indent=2,
            )
        )
    else:
        print(profile_markdown(config, title=str(args.model)), end="")
    if args.plot:
        print(
            f"profile plot: {plot_profile(config, args.plot, title=str(args.model), force=args.force)}"
        )
    return 0
