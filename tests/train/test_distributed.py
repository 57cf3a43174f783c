"""Data-parallel training for real: torchrun, 2 processes, gloo on CPU, FSDP2 `fully_shard`.

2 processes x micro-batch B must follow the loss curve of 1 process x 2B. The tolerance is
relative 1e-5 on every logged loss and 1e-5 absolute on the final weights (fp32): the only
difference is the order of the floating-point sums (gradients reduce-scattered over two
processes instead of summed in one), which moves results by a few ulps per step.
Checkpoints hold full (unsharded) state, so the 2-process run resumes in 1 process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elmforge.train import RunConfig, pretrain
from tests.train.helpers import (
    REPO_ROOT,
    learning_curve,
    micro_run,
    safetensors_state,
    subprocess_env,
    write_yaml,
)

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def _assert_same_curve(actual: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for got, want in zip(actual, expected):
        for key in ("loss", "z_loss", "val_loss", "grad_norm"):
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=LOSS_RTOL), (key, got, want)
        assert got["tokens"] == want["tokens"] and got["lr"] == want["lr"]


def _assert_close_weights(actual_dir: Path, expected_dir: Path) -> None:
    expected = safetensors_state(expected_dir)
    actual = safetensors_state(actual_dir)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=WEIGHT_ATOL, msg=key)


@pytest.mark.slow
def test_two_processes_fsdp2_equal_one_process_with_twice_the_batch(
    bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    common = dict(
        schedule={"warmup_steps": 2, "max_steps": 6},
        checkpoint={"save_every": 3, "keep_last": 0},
        log={"log_every": 1, "eval_every": 3, "eval_batches": 2, "tensorboard": False},
    )
    two = micro_run(bpe_tokenizer_dir, train={"micro_batch_size": 2, "data_sharding": "global_batch"},
                    **common)  # fmt: skip
    one = micro_run(bpe_tokenizer_dir, train={"micro_batch_size": 4, "data_sharding": "global_batch"},
                    **common)  # fmt: skip
    config_path = write_yaml(tmp_path / "two.yaml", two)
    dist_dir = tmp_path / "two-processes"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "elmforge.cli.main", "pretrain", "--config", str(config_path),
               "--out", str(dist_dir)]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) x 2" in result.stdout

    single_dir = tmp_path / "one-process"
    pretrain(RunConfig.from_dict(one), single_dir)
    _assert_same_curve(learning_curve(dist_dir), learning_curve(single_dir))
    _assert_close_weights(dist_dir / "final", single_dir / "final")

    # The 2-process checkpoint at step 3 resumes in one process (world-size independent state).
    resumed = tmp_path / "resumed"
    shutil.copytree(dist_dir, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    pretrain(RunConfig.from_dict(one), resumed)
    _assert_same_curve(learning_curve(resumed), learning_curve(single_dir))
    _assert_close_weights(resumed / "final", single_dir / "final")
