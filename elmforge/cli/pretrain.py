"""`elmforge pretrain --config RUN.yaml --out DIR [--optim.lr 1e-3 ...]`: train an OpenELM model."""

from __future__ import annotations

import argparse

from elmforge.config import add_config_flags, overrides_of
from elmforge.train.config import RunConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain an OpenELM model (resumes automatically from --out)",
        description="Pretrain an OpenELM model with the paper's recipe. Re-running the same "
        "command on the same --out directory resumes from its newest intact checkpoint. "
        "Any config key can be overridden as --section.key VALUE (e.g. --optim.lr 1e-3). "
        "Several processes: torchrun --nproc_per_node N -m elmforge.cli.main pretrain ...",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        metavar="YAML",
        help="an elmforge run config, or a packaged one by name (tiny-cpu, openelm-270m, ...)",
    )
    source.add_argument(
        "--corenet-config",
        metavar="YAML",
        help="a CoreNet OpenELM config (projects/openelm/pretraining_configs/*.yaml)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even if the config changed in a way that breaks exact resumption (data, "
        "batch, model keys; see docs/pretrain.md)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the config (file, defaults and overrides merged) as YAML and exit without "
        "training; values left `auto` (tokenizer, vocab_size, grad_accum, precision, device) are "
        "decided when the run starts and logged then",
    )
    add_config_flags(p, RunConfig, "config overrides (see docs/pretrain.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = RunConfig.load(args.config, overrides_of(args), corenet=args.corenet_config)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from elmforge.train.loop import pretrain  # torch: after the config is known to be good

    final = pretrain(config, args.out, force_resume=args.force_resume)
    print(f"final model: {final}")
    return 0
