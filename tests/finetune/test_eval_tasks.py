"""lm-eval tasks while fine-tuning (``eval.tasks``): real lm-eval through the evaluation harness
on the model in memory, offline task files (tests/evaluate's, written under pytest's tmp dirs),
the scores in metrics.jsonl as ``val_<task>_<metric>``, on loss.png, and usable by
``eval.keep_best``. The 2-process run is in test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmforge.errors import ConfigError
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.evaluate.eval_helpers import write_task_dir
from tests.finetune.conftest import instruction_rows, write_json

QUICK = ["log.progress=none", "log.log_every=1", "checkpoint.save_every=100", "train.num_threads=1",
         "train.micro_batch_size=2", "schedule.warmup_ratio=0.0", "optim.lr=5e-3",
         "schedule.max_steps=4", "eval.every=2", "eval.holdout=0.25"]  # fmt: skip
SCORES = {"val_arc_easy_acc", "val_arc_easy_acc_norm", "val_boolq_acc"}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task_dir(tmp_path_factory.mktemp("tasks"), n=4)


def _tasks(task_dir: Path) -> list[str]:
    return ["eval.tasks=arc_easy,boolq", f"eval.data_dir={task_dir}", "eval.limit=3"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_task_scores_are_the_harness_scores_of_the_model(tmp_path, base_model_dir, task_dir):
    """Full SFT scored at steps 0, 2 and 4; the last scores equal the harness's on ``final/``
    (the same weights, batch size and documents: equal to the bit), and ``eval.keep_best`` keeps
    the checkpoint with the best task score."""
    from elmforge.evaluate.harness import load_and_evaluate
    from elmforge.evaluate.request import EvalRequest

    data = write_json(tmp_path / "facts.json", instruction_rows())
    config = FinetuneConfig.load(
        None, [*QUICK, *_tasks(task_dir), "eval.keep_best=val_arc_easy_acc_norm"]
    )
    run = tmp_path / "run"
    finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, run)
    scored = [r for r in _records(run) if "val_loss" in r]
    assert [r["step"] for r in scored] == [0, 2, 4]
    for record in scored:
        assert SCORES <= record.keys() and not [k for k in record if k.endswith("_stderr")]
        assert all(0 <= record[k] <= 1 for k in SCORES)
    request = EvalRequest(tasks=["arc_easy", "boolq"], limit=3, data_dir=task_dir, batch_size=2)
    results = load_and_evaluate(run / "final", request, device="cpu", dtype="fp32")["results"]
    assert scored[-1]["val_arc_easy_acc_norm"] == results["arc_easy"]["acc_norm"]
    assert scored[-1]["val_boolq_acc"] == results["boolq"]["acc"]
    best = json.loads((run / "checkpoints/best/trainer_state.json").read_text())
    assert best["best"] == max(r["val_arc_easy_acc_norm"] for r in scored[1:])
    assert (run / "loss.png").stat().st_size > 0


@pytest.mark.slow
def test_scoring_leaves_the_training_run_unchanged(tmp_path, base_model_dir, task_dir) -> None:
    """lm-eval seeds the global generators; with LoRA dropout on, a run scoring tasks trains
    exactly as one that does not (losses and adapter to the bit)."""
    data = write_json(tmp_path / "facts.json", instruction_rows())
    lora = ["peft=lora", "lora.r=2", "lora.dropout=0.1"]
    runs = {}
    for name, extra in (("plain", []), ("scored", _tasks(task_dir))):
        config = FinetuneConfig.load(None, [*QUICK, *lora, *extra])
        finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, tmp_path / name)
        runs[name] = tmp_path / name
    keys = ("step", "loss", "val_loss", "grad_norm")
    plain, scored = _records(runs["plain"]), _records(runs["scored"])
    assert [{k: r.get(k) for k in keys} for r in scored] == [
        {k: r.get(k) for k in keys} for r in plain
    ]
    assert SCORES <= scored[-1].keys()
    weights = "adapter/adapter_model.safetensors"
    expected, got = load_file(runs["plain"] / weights), load_file(runs["scored"] / weights)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.tasks=arc_esy"], r"^eval\.tasks: unknown lm-eval task 'arc_esy' \(did you mean "),
        (["eval.tasks=arc_easy", "eval.keep_best=val_arc_easy_f1"],
         r"^eval\.keep_best: 'val_arc_easy_f1': task arc_easy reports acc, acc_norm$"),
        (["eval.tasks=arc_easy", "eval.data_dir={tmp}/nowhere"],
         r"^eval\.data_dir .*/nowhere: no such directory$"),
    ],
    ids=["unknown task", "unknown task metric", "missing data directory"],
)  # fmt: skip
def test_bad_eval_tasks_stop_before_training(tmp_path, base_model_dir, overrides, message):
    data = write_json(tmp_path / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, [*QUICK, *(o.format(tmp=tmp_path) for o in overrides)])
    with pytest.raises(ConfigError, match=message) as caught:
        finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, tmp_path / "run")
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.tasks=arc_easy"], "eval.tasks: needs eval.every"),
        (["eval.every=2", "eval.keep_best=val_piqa_acc"],
         "eval.keep_best: 'val_piqa_acc' is none of val_loss, .* of a task in eval.tasks"),
        (["eval.every=2", "eval.limit=0"], "eval.limit: must be positive"),
    ],
)  # fmt: skip
def test_eval_task_settings_are_checked_with_the_config(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.load(None, overrides)


def test_keep_best_names_the_longest_task_that_fits() -> None:
    from elmforge.finetune.config import task_of_metric

    section = FinetuneConfig.load(None, ["eval.every=1", "eval.tasks=arc,arc_easy"]).eval
    assert task_of_metric("val_arc_easy_acc_norm", section) == ("arc_easy", "acc_norm")
    assert task_of_metric("val_arc_challenge_acc", section) == ("arc", "challenge_acc")
    assert task_of_metric("val_boolq_acc", section) is None
