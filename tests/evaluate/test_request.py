"""EvalRequest: one object carries every setting and is checked when built (no model, no lm-eval)."""

from __future__ import annotations

import pytest

from elmforge.errors import ElmforgeError
from elmforge.evaluate.harness import EvalRequest


@pytest.mark.parametrize(
    ("fields", "from_python", "on_command_line"),
    [
        ({"tasks": ["piqa"], "limit": 0}, "limit 0: must be >= 1", "--limit 0: must be >= 1"),
        ({"tasks": ["piqa"], "batch_size": 0}, "batch_size 0: must be", "--batch-size 0: must be"),
        ({"tasks": ["piqa"], "num_fewshot": -1}, "num_fewshot -1", "--num-fewshot -1"),
        (
            {"tasks": ["piqa"], "data_dir": "/nowhere/x"},
            "data_dir /nowhere/x: no such",
            "--data-dir",
        ),
        ({}, "nothing to evaluate", "nothing to evaluate"),
        ({"suite": "zero-shot", "tasks": ["piqa"]}, "either a suite or a task list", "either"),
        ({"suite": "zero_shot"}, "unknown suite 'zero_shot'", "choose from zero-shot"),
    ],
)
def test_request_is_checked_when_built(fields, from_python, on_command_line):
    with pytest.raises(ElmforgeError) as caught:
        EvalRequest(**fields)
    assert from_python in str(caught.value)
    assert on_command_line in caught.value.for_command_line()


def test_runs_group_a_suites_tasks_by_fewshot_count():
    request = EvalRequest(suite="openllm")
    assert request.runs == {
        25: ["arc_challenge"],
        10: ["hellaswag"],
        5: ["mmlu", "winogrande"],
        0: ["truthfulqa_mc2"],
    }
    assert request.task_names == [
        "arc_challenge",
        "hellaswag",
        "mmlu",
        "truthfulqa_mc2",
        "winogrande",
    ]
    assert EvalRequest(suite="openllm", num_fewshot=0).runs == {0: request.task_names}
    assert EvalRequest(perplexity_data="builtin:python-docs").runs == {}
