"""Resumption to the bit: a real `elmforge pretrain` process killed with SIGKILL mid-run, then
rerun with the same command, ends with exactly the losses and weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from elmforge.train import RunConfig, pretrain
from tests.train.helpers import (
    REPO_ROOT,
    elmforge_command,
    learning_curve,
    micro_run,
    read_metrics,
    run_elmforge,
    safetensors_state,
    subprocess_env,
    write_yaml,
)


def _run_config(tokenizer_dir: Path) -> dict:
    return micro_run(
        tokenizer_dir,
        data={"seq_len": 64},
        schedule={"warmup_steps": 5, "max_steps": 60},
        train={"micro_batch_size": 8},
        checkpoint={"save_every": 7, "keep_last": 2},
        log={"log_every": 1, "eval_every": 20, "eval_batches": 2, "tensorboard": True},
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_is_bit_for_bit_the_uninterrupted_run(
    bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    run = _run_config(bpe_tokenizer_dir)
    config_path = write_yaml(tmp_path / "run.yaml", run)
    reference = tmp_path / "reference"
    pretrain(RunConfig.from_dict(run), reference)

    out = tmp_path / "killed"
    command = elmforge_command("pretrain", "--config", str(config_path), "--out", str(out))
    process = subprocess.Popen(
        command, env=subprocess_env(), cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 25:
                break
            time.sleep(0.01)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "final").exists()
    killed_at = len(read_metrics(out))
    assert 25 <= killed_at < 60

    result = run_elmforge("pretrain", "--config", str(config_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoints/step-" in result.stdout

    assert learning_curve(out) == learning_curve(reference)
    expected = safetensors_state(reference / "final")
    resumed = safetensors_state(out / "final")
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
