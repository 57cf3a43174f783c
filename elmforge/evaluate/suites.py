"""The paper's evaluation suites, and which task runs with how many few-shot examples.

Light on purpose (no lm-eval import): the CLI lists the suites in ``--help`` before anything heavy
loads. A suite is a name -> {lm-eval task: few-shot examples}; adding one is one entry here (its
source in docs/openelm.md, "Evaluation").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elmforge.errors import ElmforgeError, OptionError

# The paper's suites (docs/openelm.md, "Evaluation"): lm-eval task name -> few-shot examples.
SUITES: dict[str, dict[str, int]] = {
    "zero-shot": {
        "arc_challenge": 0,
        "arc_easy": 0,
        "boolq": 0,
        "hellaswag": 0,
        "piqa": 0,
        "sciq": 0,
        "winogrande": 0,
    },
    "openllm": {
        "arc_challenge": 25,
        "hellaswag": 10,
        "mmlu": 5,
        "truthfulqa_mc2": 0,
        "winogrande": 5,
    },
    "llm360": {
        "arc_challenge": 25,
        "crows_pairs_english": 0,
        "hellaswag": 10,
        "winogrande": 5,
        "mmlu": 5,
        "piqa": 0,
        "race": 0,
    },
}
# Metric shown per task: normalised accuracy where lm-eval defines it (as the paper reports).
HEADLINE_METRICS = ("acc_norm", "acc", "pct_stereotype")


def headline_metric(task_result: dict[str, Any]) -> str | None:
    return next((m for m in HEADLINE_METRICS if task_result.get(m) is not None), None)


def plan_fewshot_runs(
    tasks: Sequence[str] | None, suite: str | None, num_fewshot: int | None
) -> dict[int | None, list[str]]:
    """Task names grouped by the few-shot count to run them with (None: lm-eval's default)."""
    if suite is not None and tasks:
        raise ElmforgeError("give either a suite or a task list, not both")
    if num_fewshot is not None and num_fewshot < 0:
        raise OptionError("num_fewshot", f"{{option}} {num_fewshot}: must be >= 0")
    if suite is not None:
        if suite not in SUITES:
            raise ElmforgeError(f"unknown suite '{suite}' (choose from {', '.join(SUITES)})")
        per_task: dict[str, int | None] = dict(SUITES[suite])
    else:
        per_task = dict.fromkeys(tasks or [], None)
    if num_fewshot is not None:
        per_task = dict.fromkeys(per_task, num_fewshot)
    runs: dict[int | None, list[str]] = {}
    for task, shots in per_task.items():
        runs.setdefault(shots, []).append(task)
    return runs


def fewshot_count(config: dict[str, Any], num_fewshot: int | None) -> int:
    """Few-shot examples a task draws: the requested count, else its config's default."""
    return num_fewshot if num_fewshot is not None else int(config.get("num_fewshot") or 0)
