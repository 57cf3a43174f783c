"""`elmforge finetune sft|dpo MODEL --data DATA --out DIR` and `elmforge merge-adapter`."""

from __future__ import annotations

import argparse

from elmforge.config import add_config_flags, add_override_alias, overrides_of
from elmforge.finetune.config import FinetuneConfig

EPILOG = """examples:
  elmforge finetune sft runs/demo/averaged --data ../shared/data/commonsense/ARC-Easy/train.json \\
      --prompt-style llm-adapters --peft lora --out runs/sft-lora --schedule.max_steps 200
  elmforge finetune dpo apple/OpenELM-270M --data prefs.jsonl --out runs/dpo \\
      --config finetune/dpo-openelm-270m
  elmforge merge-adapter runs/demo/averaged runs/sft-lora/adapter --out runs/merged
Re-running a command with the same --out resumes it from its newest intact checkpoint.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="SFT or DPO of an OpenELM model, full or with LoRA/DoRA (resumes from --out)",
        description="Fine-tune an OpenELM model directory (Apple's hub layout, a converted "
        "CoreNet checkpoint, an elmforge run's final/) or hub name. Any config key can be "
        "overridden as --section.key VALUE.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    objectives = p.add_subparsers(dest="objective", metavar="OBJECTIVE")
    objectives.required = True
    for objective, help_text in (
        ("sft", "supervised fine-tuning (prompt tokens never count in the loss)"),
        ("dpo", "direct preference optimisation on prompt/chosen/rejected pairs"),
    ):
        sub = objectives.add_parser(objective, help=help_text, description=help_text,
                                    epilog=EPILOG,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        sub.add_argument("model", metavar="MODEL", help="model directory or hub name")
        sub.add_argument("--data", required=True, help=".json/.jsonl/.parquet file, a directory "
                         "of those, or hf:org/name (with --split)")  # fmt: skip
        add_override_alias(sub, "--split", "data.split", metavar="SPLIT",
                           help="split of an hf: dataset (same as --data.split)")  # fmt: skip
        sub.add_argument("--out", required=True, metavar="DIR", help="run directory")
        sub.add_argument(
            "--config",
            metavar="YAML",
            help="a run config file, or a packaged one by name (finetune/dpo-openelm-270m)",
        )
        sub.add_argument("--tokenizer", help="tokenizer file/dir (default: the model's own, "
                         "LLaMA-2's for Apple's hub layouts)")  # fmt: skip
        sub.add_argument("--print-config", action="store_true",
                         help="print the resolved config as YAML and exit")  # fmt: skip
        sub.add_argument("--force-resume", action="store_true",
                         help="resume even where the data, its order or the batch changed "
                         "(the data stream starts afresh; docs/finetune.md)")  # fmt: skip
        if objective == "sft":
            add_override_alias(sub, "--prompt-style", "data.prompt_style",
                               choices=("alpaca", "llm-adapters", "chat"),
                               help="same as --data.prompt_style")  # fmt: skip
        if objective == "dpo":
            add_override_alias(sub, "--loss", "dpo.loss", choices=("sigmoid", "hinge"),
                               help="same as --dpo.loss")  # fmt: skip
            add_override_alias(sub, "--beta", "dpo.beta", metavar="BETA",
                               help="same as --dpo.beta")  # fmt: skip
        skip = ("dpo.loss", "dpo.beta") if objective == "sft" else ()
        add_config_flags(sub, FinetuneConfig, "config keys (docs/finetune.md)", skip=skip)
        sub.set_defaults(run=run)

    merge = subparsers.add_parser(
        "merge-adapter",
        help="merge a PEFT LoRA/DoRA adapter into its base model (Apple's layout)",
        description="Load BASE, apply the PEFT adapter in ADAPTER and write the merged model to "
        "--out in Apple's layout with the tokenizer and Apple's chat template. A tied head "
        "stays tied unless the adapter changes the embedding (then it is written untied so "
        "the merged model computes exactly what the adapter did).",
    )
    merge.add_argument("base", metavar="BASE", help="the base model directory or hub name")
    merge.add_argument("adapter", metavar="ADAPTER", help="a PEFT adapter directory")
    merge.add_argument("--out", required=True, metavar="DIR", help="the merged model directory")
    merge.add_argument("--tokenizer", help="tokenizer (default: the base model's own)")
    merge.add_argument("--force", action="store_true", help="replace an earlier merge at --out")
    merge.set_defaults(run=run_merge)


def run(args: argparse.Namespace) -> int:
    from elmforge.finetune.trainer import FinetuneJob, finetune

    config = FinetuneConfig.load(args.config, overrides_of(args))
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    job = FinetuneJob(args.objective, args.model, args.data, args.tokenizer)
    final = finetune(job, config, args.out, force_resume=args.force_resume)
    print(f"final model: {final}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from elmforge.export.merge import merge_adapter_dir

    out = merge_adapter_dir(args.base, args.adapter, args.out, args.tokenizer, args.force)
    print(f"wrote {out}")
    return 0
