"""Evaluation while fine-tuning: ``eval.every`` scores held-aside rows (validation loss for SFT;
loss, preference accuracy and margin for DPO) into metrics.jsonl beside the training metrics, and
``eval.keep_best`` keeps the best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elmforge.errors import ConfigError
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.finetune.conftest import instruction_rows, preference_rows, write_json

QUICK = ["log.progress=none", "log.log_every=1", "checkpoint.save_every=100", "train.num_threads=1",
         "train.micro_batch_size=2", "schedule.warmup_ratio=0.0", "peft=lora", "lora.r=2",
         "lora.dropout=0.0", "optim.lr=5e-3", "schedule.max_steps=6"]  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_validation_loss_and_the_best_checkpoint(tmp_path: Path, base_model_dir: Path) -> None:
    data = write_json(tmp_path / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, [*QUICK, "eval.every=2", "eval.holdout=0.25",
                                        "eval.keep_best=val_loss"])  # fmt: skip
    finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, tmp_path / "run")
    records = _records(tmp_path / "run")
    scored = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in scored] == [0, 2, 4, 6] and "loss" not in scored[0]
    assert all(r["val_ppl"] > 1 for r in scored)
    best = json.loads((tmp_path / "run/checkpoints/best/trainer_state.json").read_text())
    assert best["best"] == min(r["val_loss"] for r in scored[1:])
    assert best["step"] == min(scored[1:], key=lambda r: r["val_loss"])["step"]


def test_dpo_preference_accuracy_and_margin_on_given_rows(tmp_path: Path, base_model_dir) -> None:
    train = write_json(tmp_path / "pairs.json", preference_rows()[:6])
    held = write_json(tmp_path / "held.json", preference_rows()[6:])
    config = FinetuneConfig.load(None, [*QUICK, "eval.every=3", f"eval.data={held}",
                                        "dpo.beta=0.5"])  # fmt: skip
    finetune(FinetuneJob("dpo", str(base_model_dir), str(train)), config, tmp_path / "run")
    scored = [r for r in _records(tmp_path / "run") if "val_accuracy" in r]
    assert [r["step"] for r in scored] == [0, 3, 6]
    assert scored[0]["val_margin"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    assert {"val_loss", "val_margin"} <= set(scored[-1]) and 0 <= scored[-1]["val_accuracy"] <= 1


def test_keep_best_needs_evaluation() -> None:
    with pytest.raises(ConfigError, match="eval.keep_best: needs eval.every"):
        FinetuneConfig.load(None, ["eval.keep_best=val_loss"])
