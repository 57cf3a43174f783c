"""Fine-tuning on the training engine: the resume rules of pretraining (a changed learning rate is
applied and printed, a changed dataset refused naming the key unless forced), and non-finite steps
skipped and counted as in pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elmforge.errors import ConfigError
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.finetune.conftest import instruction_rows, write_json

QUICK = ["log.progress=plain", "log.log_every=1", "checkpoint.save_every=2", "train.num_threads=1",
         "train.micro_batch_size=4", "schedule.warmup_ratio=0.0", "peft=lora", "lora.r=2",
         "optim.lr=3e-3"]  # fmt: skip


@pytest.fixture()
def short_run(tmp_path: Path, base_model_dir: Path) -> tuple[FinetuneJob, Path]:
    data = write_json(tmp_path / "facts.json", instruction_rows())
    job = FinetuneJob("sft", str(base_model_dir), str(data))
    finetune(job, FinetuneConfig.load(None, [*QUICK, "schedule.max_steps=2"]), tmp_path / "run")
    return job, tmp_path / "run"


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_a_changed_learning_rate_continues_and_says_so(short_run, capsys) -> None:
    job, run = short_run
    capsys.readouterr()
    config = FinetuneConfig.load(None, [*QUICK, "schedule.max_steps=4", "optim.lr=1e-3"])
    assert finetune(job, config, run) == run / "final"
    out = capsys.readouterr().out
    assert "resuming with changed settings, applied from the resumed step:" in out
    assert "optim.lr 0.003 -> 0.001" in out and "schedule.max_steps 2 -> 4" in out
    assert "resumed from checkpoints/step-00000002" in out
    assert _steps(run) == [1, 2, 3, 4]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[2]["lr"] <= 1e-3  # the new peak from the resumed step on


def test_resume_with_another_dataset_is_refused_naming_the_key(short_run, tmp_path) -> None:
    job, run = short_run
    other = write_json(tmp_path / "other.json", instruction_rows()[:5])
    moved = FinetuneJob(job.objective, job.model, str(other))
    config = FinetuneConfig.load(None, [*QUICK, "schedule.max_steps=4"])
    with pytest.raises(ConfigError, match=r"resuming with job.data .* --force-resume"):
        finetune(moved, config, run)
    assert _steps(run) == [1, 2]
    finetune(moved, config, run, force_resume=True)  # weights and optimizer carry over
    assert _steps(run) == [1, 2, 3, 4]


def test_resume_with_another_batch_is_refused(short_run) -> None:
    job, run = short_run
    config = FinetuneConfig.load(None, [*QUICK, "schedule.max_steps=4", "train.micro_batch_size=2"])
    with pytest.raises(ConfigError, match="train.micro_batch_size 4 -> 2"):
        finetune(job, config, run)
