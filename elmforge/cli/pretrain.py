"""`elmforge pretrain --config RUN.yaml --out DIR [--optim.lr 1e-3 ...]`: train an OpenELM model."""

from __future__ import annotations

import argparse

from elmforge.errors import ConfigError

_OVERRIDE_PREFIX = "override:"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from elmforge.train.config import documented_keys

    p = subparsers.add_parser(
        "pretrain",
        help="pretrain an OpenELM model (resumes automatically from --out)",
        description="Pretrain an OpenELM model with the paper's recipe. Re-running the same "
        "command on the same --out directory resumes from its newest intact checkpoint. "
        "Any config key can be overridden as --section.key VALUE (e.g. --optim.lr 1e-3). "
        "Several processes: torchrun --nproc_per_node N -m elmforge.cli.main pretrain ...",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="YAML", help="an elmforge run config (configs/*.yaml)")
    source.add_argument(
        "--corenet-config",
        metavar="YAML",
        help="a CoreNet OpenELM config (projects/openelm/pretraining_configs/*.yaml)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML and exit without training",
    )
    p.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any key, including model.shape.* (repeatable)",
    )
    overrides = p.add_argument_group("config overrides (see docs/pretrain.md)")
    for key, doc in documented_keys().items():
        overrides.add_argument(
            f"--{key}",
            dest=_OVERRIDE_PREFIX + key,
            metavar="VALUE",
            default=argparse.SUPPRESS,
            help=doc.replace("%", "%%"),
        )
    p.set_defaults(run=run)


def overrides_of(args: argparse.Namespace) -> list[str]:
    given = [
        f"{dest[len(_OVERRIDE_PREFIX) :]}={value}"
        for dest, value in vars(args).items()
        if dest.startswith(_OVERRIDE_PREFIX)
    ]
    for item in args.set_overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        given.append(item)
    return given


def run(args: argparse.Namespace) -> int:
    from elmforge.train.config import RunConfig
    from elmforge.train.loop import pretrain

    overrides = overrides_of(args)
    if args.corenet_config:
        config = RunConfig.from_corenet_yaml(args.corenet_config, overrides)
    else:
        config = RunConfig.from_yaml(args.config, overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    final = pretrain(config, args.out)
    print(f"final model: {final}")
    return 0
