"""elmforge's lm-eval runs score exactly like a direct ``lm_eval.simple_evaluate`` call."""

from __future__ import annotations

import json

import pytest

from elmforge.evaluate import evaluate_model
from tests.evaluate.eval_helpers import direct_lm_eval, direct_metric

# Multiple choice (4-way with a 3-way question, 2-way, with and without acc_norm), yes/no,
# fill-in-the-blank, and TruthfulQA's mc2 (its own process_results).
ZERO_SHOT = {
    "arc_easy": ("test_split", "test", "arc_easy/test.jsonl"),
    "boolq": ("validation_split", "validation", "boolq/validation.super_glue.jsonl"),
    "winogrande": ("validation_split", "validation", "winogrande/validation.jsonl"),
    "piqa": ("validation_split", "validation", "piqa/validation.jsonl"),
    "hellaswag": ("validation_split", "validation", "hellaswag/validation.jsonl"),
    "truthfulqa_mc2": ("validation_split", "validation", "truthfulqa/validation_mc.jsonl"),
}
WITH_ACC_NORM = {"arc_easy", "piqa", "hellaswag"}


@pytest.fixture(scope="module")
def zero_shot_report(tiny_model, tokenizer, task_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero_shot")
    return evaluate_model(
        tiny_model,
        tokenizer,
        tasks=list(ZERO_SHOT),
        data_dir=task_dir,
        out_dir=out,
        model_name="tiny",
    ), out


def test_accuracies_equal_direct_lm_eval(
    zero_shot_report, tiny_model, tokenizer, task_dir, tmp_path
):
    report, _ = zero_shot_report
    task_splits = {
        task: {role: (split, task_dir / file)} for task, (role, split, file) in ZERO_SHOT.items()
    }
    raw = direct_lm_eval(tiny_model, tokenizer, task_splits, tmp_path / "configs")
    for task in ZERO_SHOT:
        ours = report["results"][task]
        for metric in ("acc", "acc_norm"):
            assert ours.get(metric) == direct_metric(raw, task, metric), (task, metric)
        assert ours["n"] == 8
        assert ours["num_fewshot"] == 0
    # A random model does not score every task the same: the comparison is not trivially equal.
    assert len({report["results"][t]["acc"] for t in ZERO_SHOT}) > 1


def test_results_json_layout(zero_shot_report):
    report, out = zero_shot_report
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(report["results"]))
    for key in ("model", "tokenizer", "versions", "date"):
        assert key in on_disk
    assert on_disk["versions"]["lm_eval"] == "0.4.13"
    assert on_disk["model"]["name"] == "tiny"
    assert on_disk["tokenizer"]["add_bos_token"] is True
    for task in ZERO_SHOT:
        entry = on_disk["results"][task]
        assert ("acc_norm" in entry) == (task in WITH_ACC_NORM), task
        assert 0.0 <= entry["acc"] <= 1.0
    assert on_disk["results"]["arc_easy"]["split"] == "test"
    markdown = (out / "results.md").read_text()
    assert "| arc_easy | 8 | 0 | acc_norm |" in markdown
    assert "| winogrande | 8 | 0 | acc |" in markdown


def test_fewshot_from_dev_split_equals_direct_lm_eval(tiny_model, tokenizer, task_dir, tmp_path):
    # MMLU: one file for all subjects (rows filtered by `subject`), few-shot from `dev`.
    report = evaluate_model(
        tiny_model, tokenizer, tasks=["mmlu_anatomy"], num_fewshot=2, data_dir=task_dir
    )
    subject_files = {}
    for split in ("test", "dev"):
        rows = [
            line
            for line in (task_dir / "mmlu" / f"{split}.jsonl").read_text().splitlines()
            if json.loads(line)["subject"] == "anatomy"
        ]
        subject_files[split] = tmp_path / f"anatomy_{split}.jsonl"
        subject_files[split].write_text("\n".join(rows) + "\n")
    raw = direct_lm_eval(
        tiny_model,
        tokenizer,
        {
            "mmlu_anatomy": {
                "test_split": ("test", subject_files["test"]),
                "fewshot_split": ("dev", subject_files["dev"]),
            }
        },
        tmp_path / "configs",
        num_fewshot=2,
    )
    ours = report["results"]["mmlu_anatomy"]
    assert ours["acc"] == direct_metric(raw, "mmlu_anatomy", "acc")
    assert ours["n"] == 4
    assert ours["num_fewshot"] == 2
    assert ours["fewshot_split"] == "dev"


def test_limit_batch_size_and_training_mode_restored(tiny_model, tokenizer, task_dir):
    tiny_model.train()  # as a trainer would call it mid-training
    try:
        report = evaluate_model(
            tiny_model,
            tokenizer,
            tasks=["piqa"],
            limit=3,
            batch_size=3,
            data_dir=task_dir,
        )
        assert tiny_model.training
    finally:
        tiny_model.eval()
    assert report["results"]["piqa"]["n"] == 3
    assert report["settings"]["batch_size"] == 3
    assert report["model"]["device"] == "cpu"
