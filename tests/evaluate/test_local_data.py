"""Offline data directories: which file each task reads, fallbacks, schema checks, real files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from elmforge.errors import DataError, ElmforgeError
from elmforge.evaluate import evaluate_model
from tests.conftest import LLAMA2_TOKENIZER, SHARED_DATA, require_shared
from tests.evaluate.eval_helpers import _write_jsonl
from tests.shapes import micro_config


def test_missing_test_split_names_the_path_unless_fallback_allowed(
    tiny_model, tokenizer, task_dir, tmp_path
):
    # Only a validation file for ARC-Easy, whose lm-eval config scores `test`.
    shutil.copy(task_dir / "arc_easy" / "test.jsonl", tmp_path / "validation.jsonl")
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "validation.jsonl").rename(tmp_path / "arc_easy" / "validation.jsonl")
    with pytest.raises(DataError, match=r"task arc_easy: .*'test'.*arc_easy/test\.jsonl"):
        evaluate_model(tiny_model, tokenizer, tasks=["arc_easy"], data_dir=tmp_path)
    report = evaluate_model(
        tiny_model, tokenizer, tasks=["arc_easy"], data_dir=tmp_path, allow_split_fallback=True
    )
    entry = report["results"]["arc_easy"]
    assert entry["split"] == "validation"
    assert entry["n"] == 8
    assert "arc_easy/test.jsonl" in entry["split_fallback"][0]


def test_google_boolq_schema_scores_like_super_glue_schema(
    tiny_model, tokenizer, task_dir, tmp_path
):
    # google/boolq files carry a bool `answer`; lm-eval's task reads super_glue's int `label`.
    rows = [
        json.loads(line) for line in (task_dir / "boolq" / "validation.super_glue.jsonl").open()
    ]
    google = [
        {"question": r["question"], "answer": bool(r["label"]), "passage": r["passage"]}
        for r in rows
    ]
    _write_jsonl(tmp_path / "boolq" / "validation.jsonl", google)
    ours = evaluate_model(tiny_model, tokenizer, tasks=["boolq"], data_dir=tmp_path)
    reference = evaluate_model(tiny_model, tokenizer, tasks=["boolq"], data_dir=task_dir)
    assert ours["results"]["boolq"]["acc"] == reference["results"]["boolq"]["acc"]


def test_bad_rows_are_reported_with_file_and_line(tiny_model, tokenizer, tmp_path):
    path = tmp_path / "piqa" / "validation.jsonl"
    path.parent.mkdir()
    path.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n{not json\n')
    with pytest.raises(DataError, match=r"piqa/validation\.jsonl: line 2 is not valid JSON"):
        evaluate_model(tiny_model, tokenizer, tasks=["piqa"], data_dir=tmp_path)
    path.write_text('{"goal": "g", "solution": "a", "label": 0}\n')
    with pytest.raises(DataError, match=r"lack the field\(s\) sol1, sol2"):
        evaluate_model(tiny_model, tokenizer, tasks=["piqa"], data_dir=tmp_path)


def test_suite_and_task_list_are_exclusive(tiny_model, tokenizer):
    with pytest.raises(ElmforgeError, match="either a suite or a task list"):
        evaluate_model(tiny_model, tokenizer, tasks=["piqa"], suite="zero-shot")
    with pytest.raises(ElmforgeError, match="unknown suite"):
        evaluate_model(tiny_model, tokenizer, suite="zero_shot")


@pytest.mark.needs_shared
@pytest.mark.slow
def test_real_schemas_with_the_llama2_tokenizer(tmp_path):
    """Every benchmark file in shared/data/eval-samples runs through its lm-eval task."""
    samples = require_shared(SHARED_DATA / "eval-samples")
    from elmforge import OpenELMForCausalLM
    from elmforge.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(require_shared(LLAMA2_TOKENIZER))
    torch.manual_seed(0)
    config = micro_config(vocab_size=32000)
    model = OpenELMForCausalLM(config).eval()
    tasks = [
        "arc_easy",
        "arc_challenge",
        "boolq",
        "hellaswag",
        "piqa",
        "sciq",
        "winogrande",
        "openbookqa",
        "truthfulqa_mc2",
        "mmlu_anatomy",
    ]
    report = evaluate_model(
        model,
        tokenizer,
        tasks=tasks,
        limit=3,
        data_dir=samples,
        allow_split_fallback=True,
        out_dir=tmp_path,
    )
    for task in tasks:
        assert report["results"][task]["n"] == 3, task
    assert report["results"]["arc_easy"]["split"] == "test"
    assert report["results"]["sciq"]["split"] == "validation"  # no test file: fallback
    assert report["results"]["mmlu_anatomy"]["split"] == "validation"
    assert report["tokenizer"]["bos_token_id"] == 1
