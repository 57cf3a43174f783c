"""`elmforge evaluate`: score a checkpoint on the paper's suites, or perplexity, or compare runs."""

from __future__ import annotations

import argparse

from elmforge.cli.arg_types import comma_list
from elmforge.cli.options import add_model_flags, load_options

EPILOG = """examples:
  elmforge evaluate runs/tiny/final --suite zero-shot --limit 50
  elmforge evaluate apple/OpenELM-270M --tokenizer llama2-tokenizer.model --suite openllm
  elmforge evaluate MODEL --tasks arc_easy,piqa --data-dir ../shared/data/eval --out runs/eval/x
  elmforge evaluate MODEL --perplexity builtin:python-docs --split validation
  elmforge evaluate MODEL --adapter runs/sft-lora/adapter --suite llm-adapters \\
      --data-dir ../shared/data/commonsense --limit 200
  elmforge evaluate --compare runs/eval/a/results.json runs/eval/b/results.json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from elmforge.evaluate.command import SUITE_CHOICES

    p = subparsers.add_parser(
        "evaluate",
        help="score a model on lm-evaluation-harness suites, perplexity; compare results",
        description=(
            "Score a model directory (HF layout) or hub name with EleutherAI's "
            "lm-evaluation-harness (bos token added, as Apple did), and/or its perplexity on a "
            "data source. Writes OUT/results.json and OUT/results.md."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(p, model_required=False)
    p.add_argument(
        "--adapter",
        metavar="DIR",
        help="a PEFT LoRA/DoRA adapter directory for MODEL, merged in at load (no merge step)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--suite",
        choices=SUITE_CHOICES,
        help="the paper's task suite, or llm-adapters (LLM-Adapters' CommonSense test sets as "
        "Apple scored its LoRA/DoRA models; needs --data-dir DIR/<task>/test.json)",
    )
    what.add_argument(
        "--tasks", type=comma_list(), help="comma-separated lm-eval task or group names"
    )
    p.add_argument("--num-fewshot", type=int, help="few-shot examples for every task")
    p.add_argument(
        "--limit",
        type=int,
        help="score only the first N documents of each task (and of --perplexity)",
    )
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass")
    p.add_argument(
        "--data-dir",
        help="offline task data: DIR/<dataset>/<split>.jsonl in the HF datasets schema",
    )
    p.add_argument(
        "--allow-split-fallback",
        action="store_true",
        help="where a split file is missing, use lm-eval's rule for a dataset without it "
        "(score validation if no test; few-shot from validation if no train); recorded",
    )
    p.add_argument("--perplexity", metavar="DATA_SPEC", help="data source to score perplexity on")
    p.add_argument("--split", default="validation", help="split of --perplexity (validation)")
    p.add_argument("--context-length", type=int, help="window length (default: the model's)")
    p.add_argument("--stride", type=int, help="perplexity window stride (default: half window)")
    p.add_argument("--log-samples", action="store_true", help="write OUT/samples/<task>.jsonl")
    p.add_argument("--out", help="output directory (default: runs/evaluate/<model name>)")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier `elmforge evaluate` output at OUT"
    )
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own log messages")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="RESULTS",
        help="compare results.json files (or their directories): table + OUT/compare.png",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.evaluate.command import evaluate_command

    tasks = list(args.tasks) if args.tasks else None
    out = evaluate_command(
        args.model,
        compare=args.compare,
        suite=args.suite,
        tasks=tasks,
        perplexity_data=args.perplexity,
        out=args.out,
        force=args.force,
        load_options={**load_options(args), "adapter": args.adapter},
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        allow_split_fallback=args.allow_split_fallback,
        perplexity_split=args.split,
        context_length=args.context_length,
        stride=args.stride,
        log_samples=args.log_samples,
        verbose=args.verbose,
    )
    if out is not None:
        print((out / "results.md").read_text(encoding="utf-8"))
        print(f"wrote {out / 'results.json'}")
    return 0
