"""Fine-tuning across processes for real: torchrun, 2 processes, gloo on CPU, FSDP2 on the frozen
base with its adapter (LoRA) or on the whole model and the DPO reference (full DPO).

2 processes x micro-batch B follow the loss curve of 1 process x 2B: relative 1e-5 on every logged
loss, reward metric and gradient norm, absolute 1e-5 on the final weights (fp32; the only
difference is the order of floating-point sums: gradients reduce-scattered over two processes).
A 2-process LoRA SFT run, and a 1-process LoRA DPO run, killed with SIGKILL and re-run end with
the uninterrupted run's adapter, bit for bit (LoRA dropout on: every rank's RNG state comes
back).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.finetune.conftest import instruction_rows, preference_rows, write_json
from tests.train.helpers import REPO_ROOT, subprocess_env

RTOL = 1e-5
ATOL = 1e-5
TIMING = {"tokens_per_s", "elapsed_s", "eta_s"}
COMMON = ["--optim.lr", "3e-3", "--log.log_every", "1", "--log.progress", "plain",
          "--train.num_threads", "1", "--train.device", "cpu", "--log.tensorboard", "false",
          "--log.plot", "false"]  # fmt: skip


def _command(processes: int, objective: str, model: Path, data: Path, out: Path, *flags: str):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(processes)] if processes > 1 else [sys.executable]  # fmt: skip
    return [*launcher, "-m", "elmforge.cli.main", "finetune", objective, str(model), "--data",
            str(data), "--out", str(out), *COMMON, *flags]  # fmt: skip


def _run(command: list[str]) -> None:
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _curve(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _assert_same_curve(actual: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in actual] == [r["step"] for r in expected]
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=RTOL, abs=1e-7), (key, got, want)
            else:
                assert got[key] == value, key


def _assert_close_files(actual: Path, expected: Path) -> None:
    want, got = load_file(expected), load_file(actual)
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=ATOL, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "flags", "weights"),
    [
        ("sft", ["--peft", "lora", "--lora.r", "4", "--lora.dropout", "0"],
         "adapter/adapter_model.safetensors"),
        ("dpo", ["--dpo.beta", "0.5"], "final/model.safetensors"),
    ],
    ids=["lora-sft", "full-dpo"],
)  # fmt: skip
def test_two_processes_follow_one_process_with_the_same_global_batch(
    tmp_path: Path, base_model_dir: Path, objective: str, flags: list[str], weights: str
) -> None:
    rows = instruction_rows() if objective == "sft" else preference_rows()
    data = write_json(tmp_path / "data.json", rows)
    steps = ["--schedule.max_steps", "6", "--checkpoint.save_every", "3", *flags]
    two, one = tmp_path / "two", tmp_path / "one"
    _run(_command(2, objective, base_model_dir, data, two, *steps, "--train.micro_batch_size", "2"))
    _run(_command(1, objective, base_model_dir, data, one, *steps, "--train.micro_batch_size", "4"))
    _assert_same_curve(_curve(two), _curve(one))
    _assert_close_files(two / weights, one / weights)


@pytest.mark.slow
def test_two_processes_score_eval_tasks_as_one_does(tmp_path: Path, base_model_dir: Path) -> None:
    """``eval.tasks`` under torchrun: every rank runs the harness's forward passes (FSDP2 gathers
    in each; a rank left out would hang the other), rank 0 writes, and the task scores equal
    one process's."""
    from tests.evaluate.eval_helpers import write_task_dir

    tasks = write_task_dir(tmp_path / "tasks", n=4)
    data = write_json(tmp_path / "data.json", instruction_rows())
    steps = ["--schedule.max_steps", "4", "--peft", "lora", "--lora.r", "4", "--lora.dropout", "0",
             "--eval.every", "2", "--eval.holdout", "0.25", "--eval.tasks", "arc_easy,boolq",
             "--eval.data_dir", str(tasks), "--eval.limit", "3", "--train.micro_batch_size",
             "2"]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    # The same global batch, and the same micro-batch (lm-eval's batch size) in both runs.
    _run(_command(2, "sft", base_model_dir, data, two, *steps))
    _run(_command(1, "sft", base_model_dir, data, one, *steps, "--train.grad_accum", "2"))
    curve = _curve(two)
    assert [r["step"] for r in curve if "val_boolq_acc" in r] == [0, 2, 4]
    _assert_same_curve(curve, _curve(one))


def _kill_midway(command: list[str], out: Path, lines: int) -> None:
    """Start ``command``, SIGKILL it (the launcher and its workers at once) once ``lines``
    metrics lines are written."""
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO_ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= lines:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processes", "objective"), [(2, "sft"), (1, "dpo")], ids=["2-process-lora-sft", "lora-dpo"]
)
def test_sigkill_then_rerun_gives_the_uninterrupted_adapter(
    tmp_path: Path, base_model_dir: Path, processes: int, objective: str
) -> None:
    rows = instruction_rows() if objective == "sft" else preference_rows()
    data = write_json(tmp_path / "data.json", rows)
    flags = ["--peft", "lora", "--lora.r", "4", "--lora.dropout", "0.1", "--schedule.max_steps",
             "14", "--checkpoint.save_every", "3", "--checkpoint.keep_last", "2",
             "--train.micro_batch_size", "2"]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "killed"
    _run(_command(processes, objective, base_model_dir, data, reference, *flags))
    command = _command(processes, objective, base_model_dir, data, out, *flags)
    _kill_midway(command, out, 7)
    assert not (out / "final").exists() and 7 <= len(_curve(out)) < 14
    _run(command)
    assert _curve(out) == _curve(reference)
    for name in ("adapter/adapter_model.safetensors", "final/model.safetensors"):
        expected, resumed = load_file(reference / name), load_file(out / name)
        assert resumed.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(resumed[key], value), (name, key)
