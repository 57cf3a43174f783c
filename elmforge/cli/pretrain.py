"""`elmforge pretrain --config RUN.yaml --out DIR [--optim.lr 1e-3 ...]`: train an OpenELM model."""

from __future__ import annotations

import argparse

from elmforge.config import add_config_flags, overrides_of, read_yaml
from elmforge.errors import ConfigError
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
    overrides = overrides_of(args)
    if args.config and not overrides and not read_yaml(args.config):
        # All defaults is not a run anyone means (they do not even fit together: the default
        # seq_len exceeds the default model's context); say so rather than blame one default.
        raise ConfigError(
            f"{args.config}: the config file is empty (a run config sets at least model and "
            "data; see configs/tiny-cpu.yaml)"
        )
    if args.corenet_config:
        config = RunConfig.from_corenet_yaml(args.corenet_config, overrides)
    else:
        config = RunConfig.from_yaml(args.config, overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from elmforge.train.loop import pretrain  # torch: after the config is known to be good

    final = pretrain(config, args.out, force_resume=args.force_resume)
    print(f"final model: {final}")
    return 0
