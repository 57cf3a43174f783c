"""`elmforge demo`: the whole lifecycle on the CPU in minutes, on text every Python carries.

Trains a BPE tokenizer on the built-in corpus, pretrains a tiny layer-wise-scaled OpenELM,
averages its last checkpoints, reports validation perplexity of the final and the averaged
model, and generates a continuation. Re-running with the same ``--out`` resumes.

``--finetune`` runs the fine-tuning demo on that model instead (elmforge.demo.finetune): SFT
with LoRA on LLM-Adapters' CommonSense rows, then DPO, with the llm-adapters accuracy and the
preference margin before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from elmforge.cli.arg_types import positive_int
from elmforge.config import add_config_flags, overrides_of
from elmforge.demo.pretrain import DEMO_CONFIG, PROMPT
from elmforge.train.config import RunConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="pretrain, average, evaluate and sample a tiny OpenELM on the CPU (minutes)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="output directory (runs/demo; runs/demo-finetune with --finetune)")
    p.add_argument(
        "--config",
        default=DEMO_CONFIG,
        help=f"run config YAML, or a packaged config's name ({DEMO_CONFIG})",
    )
    p.add_argument(
        "--vocab-size", type=positive_int, default=4096, help="demo tokenizer size (4096)"
    )
    p.add_argument(
        "--average-last", type=positive_int, default=3, help="checkpoints to average (3)"
    )
    p.add_argument(
        "--eval-documents", type=positive_int, default=200, help="validation documents (200)"
    )
    p.add_argument("--prompt", default=PROMPT, help="text to continue at the end")
    tune = p.add_argument_group("fine-tuning demo (--finetune)")
    tune.add_argument("--finetune", action="store_true", help="run the fine-tuning demo")
    tune.add_argument("--model", help="model to tune (default: runs/demo/averaged)")
    tune.add_argument(
        "--data-dir",
        help="LLM-Adapters CommonSense directory (<task>/train.json, test.json); default: "
        "../shared/data/commonsense when present, else a set built from the pydoc topics",
    )
    p.add_argument(
        "--force-resume",
        action="store_true",
        help="resume OUT/run even if the config changed in a way that breaks exact resumption",
    )
    # Every run-config key is a flag, as for `elmforge pretrain`.
    add_config_flags(p, RunConfig, "run config overrides (see docs/pretrain.md)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.finetune:
        from elmforge.demo.finetune import DemoSettings
        from elmforge.demo.finetune import run_demo as run_finetune_demo

        settings = DemoSettings(Path(args.out or "runs/demo-finetune"), args.model, args.data_dir)
        run_finetune_demo(settings)
        return 0
    from elmforge.demo.pretrain import run_demo

    run_demo(
        args.out or "runs/demo",
        config=args.config,
        overrides=overrides_of(args),
        vocab_size=args.vocab_size,
        average_last=args.average_last,
        eval_documents=args.eval_documents,
        prompt=args.prompt,
        on_text=_print_piece,
        force_resume=args.force_resume,
    )
    return 0


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)
