"""`elmforge study lws|averaging|tokens`: re-test the paper's claims with seeds and error bars.

- ``lws --out DIR``: layer-wise scaling against a uniform model matched to its parameter count,
  both trained with the same data, tokens, schedule and seeds; report with 95% intervals.
- ``averaging RUN_DIR``: the last K checkpoints, their average and the final model (Table 2).
- ``tokens RUN_DIR``: validation loss and zero-shot accuracy against tokens seen (Figure 1).

Re-running a study resumes it. See docs/studies.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from elmforge.cli.arg_types import comma_list
from elmforge.config import add_config_flags, add_override_alias, overrides_of
from elmforge.study.config import LwsStudyConfig

EVAL_DOCUMENTS = 200


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="re-test the paper's claims: layer-wise scaling, checkpoint averaging, tokens",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True

    lws = studies.add_parser(
        "lws",
        help="layer-wise scaling against a parameter-matched uniform model, over seeds",
        description="Train a layer-wise scaled OpenELM and a uniform one matched to its parameter "
        "count (within study.tolerance) on the same data, tokens, schedule and seeds, then "
        "compare their validation loss with 95%% intervals. Without --config: the default CPU "
        "budget (the packaged config study/lws-cpu: 2 arms x 3 seeds on 2 cores). Re-running "
        "the command resumes.",
    )
    lws.add_argument("--out", required=True, metavar="DIR", help="study directory")
    lws.add_argument(
        "--config", metavar="YAML", help="a run config with an optional study: section"
    )
    add_override_alias(lws, "--seeds", "study.seeds", type=int, metavar="N",
                       help="runs per arm (study.seeds; 3)")  # fmt: skip
    add_override_alias(lws, "--jobs", "study.jobs", metavar="N",
                       help="runs trained at once (study.jobs; auto)")  # fmt: skip
    add_override_alias(lws, "--data-dir", "study.data_dir", metavar="DIR",
                       help="also score zero-shot tasks from DIR (study.data_dir)")  # fmt: skip
    lws.add_argument("--force", action="store_true", help="start the study in --out over")
    add_config_flags(
        lws, LwsStudyConfig, "config overrides (docs/pretrain.md, docs/studies.md)",
        skip={"study.seeds", "study.jobs", "study.data_dir"},
    )  # fmt: skip
    lws.set_defaults(run=run_lws)

    for name, helptext in (
        (
            "averaging",
            "validation loss of the last K checkpoints, their average and the final model",
        ),
        ("tokens", "validation loss and zero-shot accuracy against tokens seen, per checkpoint"),
    ):
        sub = studies.add_parser(name, help=helptext, description=helptext + ".")
        sub.add_argument("run_dir", metavar="RUN_DIR", help="a pretraining run directory")
        if name == "averaging":
            sub.add_argument("--last", type=int, default=5, metavar="K",
                             help="checkpoints to average (5, as the paper)")  # fmt: skip
        sub.add_argument("--out", metavar="DIR",
                         help=f"report directory (RUN_DIR/study-{name})")  # fmt: skip
        sub.add_argument("--eval-documents", type=int, default=EVAL_DOCUMENTS, metavar="N",
                         help=f"held-out documents scored ({EVAL_DOCUMENTS})")  # fmt: skip
        sub.add_argument("--data-dir", metavar="DIR", help="also score zero-shot tasks from DIR")
        sub.add_argument(
            "--tasks",
            metavar="A,B",
            type=comma_list(),
            help="tasks with --data-dir (zero-shot suite)",
        )
        sub.add_argument("--limit", type=int, metavar="N", help="examples per task (all)")
        sub.add_argument("--allow-split-fallback", action="store_true",
                         help="a task whose evaluation split has no local file uses lm-eval's "
                         "rule for a dataset without it")  # fmt: skip
        sub.add_argument("--force", action="store_true", help="score every model again")
        sub.set_defaults(run=run_averaging if name == "averaging" else run_tokens)


def _command() -> str:
    return shlex.join(["elmforge", *sys.argv[1:]])


def run_lws(args: argparse.Namespace) -> int:
    from elmforge.study.lws import run_lws_study

    config = LwsStudyConfig.load(args.config, overrides_of(args))
    run_lws_study(config, args.out, force=args.force, command=_command())
    return 0


def _study_options(args: argparse.Namespace):
    from elmforge.study.common import StudyOptions

    return StudyOptions(
        documents=args.eval_documents, data_dir=args.data_dir, tasks=args.tasks,
        limit=args.limit, allow_split_fallback=args.allow_split_fallback, out_dir=args.out,
        force=args.force, command=_command(),
    )  # fmt: skip


def run_averaging(args: argparse.Namespace) -> int:
    from elmforge.study.averaging import run_averaging_study

    run_averaging_study(args.run_dir, last=args.last, options=_study_options(args))
    return 0


def run_tokens(args: argparse.Namespace) -> int:
    from elmforge.study.tokens import run_tokens_study

    run_tokens_study(args.run_dir, options=_study_options(args))
    return 0
