"""The progress display: a log interval whose steps were all skipped has no loss to show."""

from __future__ import annotations

import json
from pathlib import Path

from elmforge.train.logging import RunLogger


def test_progress_bar_shows_an_interval_of_skipped_steps(tmp_path: Path, capsys) -> None:
    logger = RunLogger(tmp_path, 0, 10, tensorboard=False, plot=False, progress="bar")
    logger.log({"step": 1, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 100.0})
    # Every step since the last line non-finite: no loss, no throughput.
    logger.log({"step": 2, "loss": None, "lr": 1e-3, "tokens_per_s": None, "skipped_steps": 1})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [2.5, None]
    assert "loss=-" in capsys.readouterr().err


def test_a_run_restarted_from_step_zero_does_not_repeat_lines(tmp_path: Path) -> None:
    first = RunLogger(tmp_path, 0, 10, tensorboard=False, plot=False, progress="none")
    first.log({"step": 0, "val_loss": 9.0})
    first.log({"step": 5, "loss": 7.0})
    first.close()  # killed before the first checkpoint: the rerun starts at step 0
    again = RunLogger(tmp_path, 0, 10, tensorboard=False, plot=False, progress="none")
    again.log({"step": 0, "val_loss": 9.0})
    again.close()
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [0]
