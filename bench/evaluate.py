"""Evaluation throughput: examples/s scoring a multiple-choice set with OpenELM-270M's shape.

    .venv/bin/python bench/evaluate.py [--task arc_easy] [--items 500] [--batch-sizes 1,8,16]

Scores the first ``--items`` documents of ``--task`` (ARC-Easy's test split by default, from
``shared/data/eval``) with ``elmforge.evaluate.evaluate_model``, i.e. lm-eval's HFLM on an
in-memory ``OpenELMForCausalLM`` with random weights (the speed does not depend on the weights),
the LLaMA-2 tokenizer, float32 on the CPU. Batch size 1 is the baseline; every other batch size
is compared with it in the same run, and the accuracies must agree (batching must not change the
scores beyond float noise). Examples/s counts documents (questions), each of which is several
log-likelihood requests (one per answer choice). Writes ``bench/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json

from elmforge import OpenELMConfig, OpenELMForCausalLM
from elmforge.data.tokenizer import default_tokenizer_path, load_tokenizer
from elmforge.evaluate import evaluate_model
from elmforge.evaluate.lm_eval_glue import default_task_manager

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="arc_easy", help="lm-eval multiple-choice task")
    parser.add_argument("--items", type=int, default=500, help="documents scored per run")
    parser.add_argument(
        "--batch-sizes", default="1,8,16", help="comma-separated; 1 is the baseline"
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA), help="offline task data")
    parser.add_argument("--tokenizer", help="tokenizer spec (default: shared LLaMA-2 model)")
    parser.add_argument("--variant", default="OpenELM-270M", help="model shape")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", help="JSON path (default: bench/results/evaluate.json)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("CI", "true")  # plain progress lines, not bars, in the log
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer_spec = args.tokenizer or default_tokenizer_path()
    if tokenizer_spec is None or not Path(args.data_dir).is_dir():
        print("needs the LLaMA-2 tokenizer and task data (shared/data); see --help")
        return 2
    tokenizer = load_tokenizer(tokenizer_spec)
    torch.manual_seed(0)
    model = OpenELMForCausalLM(OpenELMConfig.from_name(args.variant)).eval()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    def score(batch_size: int, items: int) -> tuple[float, dict]:
        start = time.perf_counter()
        report = evaluate_model(
            model,
            tokenizer,
            tasks=[args.task],
            limit=items,
            batch_size=batch_size,
            data_dir=args.data_dir,
        )
        return time.perf_counter() - start, report["results"][args.task]

    def save(rows: list[dict]) -> Path:
        return write_json(
            "evaluate",
            {
                "command": " ".join(["bench/evaluate.py", *sys.argv[1:]]),
                "variant": args.variant,
                "task": args.task,
                "items": args.items,
                "dtype": "float32",
                "device": "cpu",
                "rows": rows,
                "best_batch_size": max(rows, key=lambda row: row["examples_per_s"])["batch_size"],
            },
            args.out,
        )

    default_task_manager()  # lm-eval's task index: built once per process, not timed
    score(batch_sizes[0], 4)  # warm-up: imports, first dataset build, kernel selection
    rows = []
    for batch_size in batch_sizes:
        seconds, result = score(batch_size, args.items)
        rows.append(
            {
                "batch_size": batch_size,
                "items": result["n"],
                "seconds": seconds,
                "examples_per_s": result["n"] / seconds,
                "acc": result.get("acc"),
                "acc_norm": result.get("acc_norm"),
            }
        )
        baseline = next((row for row in rows if row["batch_size"] == 1), None)
        for row in rows:
            row["speedup_vs_bs1"] = (
                row["examples_per_s"] / baseline["examples_per_s"] if baseline else None
            )
        print_table(rows[-1:], list(rows[-1]))
        path = save(rows)  # after every row: a long run that is cut short keeps what it measured
    # Batching pads and reorders requests; scores may move by float noise, never by more than
    # one item (a near-tie flipping).
    tolerance = 1.5 / rows[0]["items"]
    disagreeing = [
        row["batch_size"]
        for row in rows
        for metric in ("acc", "acc_norm")
        if row[metric] is not None and abs(row[metric] - rows[0][metric]) > tolerance
    ]
    best = max(rows, key=lambda row: row["examples_per_s"])
    print()
    print(
        f"{args.variant} (random weights), {args.task} x {args.items}, CPU float32, "
        f"{torch.get_num_threads()} threads:"
    )
    print_table(rows, list(rows[0]))
    if best["speedup_vs_bs1"] is not None:
        print(f"best batch size: {best['batch_size']} ({best['speedup_vs_bs1']:.2f}x batch size 1)")
    print(f"wrote {path}")
    if disagreeing:
        print(f"scores differ from batch size {rows[0]['batch_size']} at batch sizes {disagreeing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
