"""The training loop on the micro shape and the built-in corpus: outputs, learning, accumulation,
non-finite steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import elmforge  # noqa: F401  (registers the Auto classes)
from elmforge.train import RunConfig, pretrain
from elmforge.train.checkpoint import find_resume_checkpoint
from elmforge.train.loop import TrainingDivergedError
from tests.train.helpers import micro_run, read_metrics, safetensors_state

METRIC_KEYS = {"step", "loss", "z_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu",
               "elapsed_s", "eta_s"}  # fmt: skip


@pytest.fixture(scope="module")
def micro_run_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_dir: Path) -> Path:
    """One 8-step run (checkpoints at 4 and 8) shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("run") / "micro"
    pretrain(RunConfig.from_dict(micro_run(bpe_tokenizer_dir)), out)
    return out


def test_run_directory_holds_what_a_person_looks_at(micro_run_dir: Path) -> None:
    initial, *records = read_metrics(micro_run_dir)
    assert initial["step"] == 0 and initial["val_loss"] > records[-1]["val_loss"]
    assert [r["step"] for r in records] == list(range(1, 9))
    for record in records:
        assert METRIC_KEYS <= set(record)
        assert record["tokens"] == record["step"] * 4 * 32
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    assert records[0]["lr"] == pytest.approx(1e-6)
    assert (micro_run_dir / "config.yaml").is_file()
    assert RunConfig.from_yaml(micro_run_dir / "config.yaml").schedule.max_steps == 8
    assert list((micro_run_dir / "tb").glob("events.out.tfevents.*"))
    assert (micro_run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = sorted(p.name for p in (micro_run_dir / "checkpoints").iterdir())
    assert steps == ["step-00000004", "step-00000008"]
    for name in steps:
        checkpoint = micro_run_dir / "checkpoints" / name
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        assert "model/model.safetensors" in manifest["files"]
        assert AutoModelForCausalLM.from_pretrained(checkpoint / "model") is not None


def test_final_model_loads_with_auto_classes_and_equals_the_last_checkpoint(
    micro_run_dir: Path,
) -> None:
    final = micro_run_dir / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "OpenELMForCausalLM"
    assert (final / "tokenizer.json").is_file()
    logits = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size) and torch.isfinite(logits).all()
    last = safetensors_state(micro_run_dir / "checkpoints" / "step-00000008" / "model")
    for key, value in safetensors_state(final).items():
        assert torch.equal(value, last[key]), key


def test_rerunning_a_finished_run_changes_nothing(micro_run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(micro_run_dir, copy)
    before = (copy / "metrics.jsonl").read_text()
    config = RunConfig.from_yaml(copy / "config.yaml")
    assert pretrain(config, copy) == copy / "final"
    assert (copy / "metrics.jsonl").read_text() == before


def test_loss_goes_down(bpe_tokenizer_dir: Path, tmp_path: Path) -> None:
    run = micro_run(
        bpe_tokenizer_dir,
        optim={"lr": 1e-2},
        schedule={"warmup_steps": 4, "max_steps": 40},
        checkpoint={"save_every": 40},
        log={"log_every": 10, "eval_every": 0, "eval_batches": 4, "tensorboard": False},
    )
    pretrain(RunConfig.from_dict(run), tmp_path / "run")
    initial, first, *_, last = read_metrics(tmp_path / "run")
    assert last["loss"] < first["loss"] - 0.5
    assert last["val_loss"] < initial["val_loss"] - 0.5
    assert last["val_loss"] < 5.5  # ln(384) = 5.95 for a uniform guess


def test_grad_accumulation_equals_a_bigger_micro_batch(
    bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    common = {"schedule": {"warmup_steps": 1, "max_steps": 3},
              "log": {"eval_batches": 0, "tensorboard": False, "plot": False},
              "checkpoint": {"save_every": 3}}  # fmt: skip
    big = micro_run(bpe_tokenizer_dir, train={"micro_batch_size": 4}, **common)
    accumulated = micro_run(
        bpe_tokenizer_dir, train={"micro_batch_size": 2, "grad_accum": 2}, **common
    )
    pretrain(RunConfig.from_dict(big), tmp_path / "big")
    pretrain(RunConfig.from_dict(accumulated), tmp_path / "acc")
    losses_big = [r["loss"] for r in read_metrics(tmp_path / "big")]
    losses_acc = [r["loss"] for r in read_metrics(tmp_path / "acc")]
    assert losses_acc == pytest.approx(losses_big, rel=1e-5)
    weights_acc = safetensors_state(tmp_path / "acc" / "final")
    for key, value in safetensors_state(tmp_path / "big" / "final").items():
        torch.testing.assert_close(weights_acc[key], value, rtol=1e-4, atol=1e-5)


def test_non_finite_steps_are_skipped_then_stop_with_a_checkpoint(
    bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    # An absurd learning rate makes the logits overflow after the first update.
    run = micro_run(
        bpe_tokenizer_dir,
        optim={"lr": 1e30, "grad_clip": 0.0},
        schedule={"warmup_steps": 0, "max_steps": 20},
        train={"max_nonfinite_steps": 3},
        log={"eval_batches": 0, "tensorboard": False},
        checkpoint={"save_every": 100},
    )
    with pytest.raises(TrainingDivergedError, match=r"3 steps in a row.*non-finite") as caught:
        pretrain(RunConfig.from_dict(run), tmp_path / "run")
    assert "lower optim.lr" in str(caught.value)
    checkpoints = list((tmp_path / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name.startswith("diverged-step-")
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 3 and state["consecutive_nonfinite"] == 3
    # Kept for inspection, never resumed from: a re-run starts from the last good checkpoint.
    assert find_resume_checkpoint(tmp_path / "run") is None
