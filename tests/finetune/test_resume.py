"""A fine-tuning run killed with SIGKILL and re-run with the same command ends with exactly the
weights of an uninterrupted run (CPU fp32; LoRA dropout on, so the RNG state must come back too)."""

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

from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.cli_support import run_elmforge
from tests.finetune.conftest import instruction_rows, write_json

STEPS = 40
SETTINGS = ["--peft", "lora", "--lora.r", "4", "--lora.dropout", "0.1", "--optim.lr", "3e-3",
            "--schedule.max_steps", str(STEPS), "--train.micro_batch_size", "3",
            "--checkpoint.save_every", "5", "--checkpoint.keep_last", "2", "--log.log_every", "1",
            "--log.progress", "plain", "--train.num_threads", "1"]  # fmt: skip
TIMING = {"tokens_per_s", "elapsed_s", "eta_s"}


def _curve(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_weights(tmp_path: Path, base_model_dir) -> None:
    data = write_json(tmp_path / "facts.json", instruction_rows())
    overrides = [f"{SETTINGS[i][2:]}={SETTINGS[i + 1]}" for i in range(0, len(SETTINGS), 2)]
    reference = tmp_path / "reference"
    finetune(FinetuneJob("sft", str(base_model_dir), str(data)),
             FinetuneConfig.load(None, overrides), reference)  # fmt: skip

    out = tmp_path / "killed"
    command = ["finetune", "sft", str(base_model_dir), "--data", str(data), "--out", str(out),
               *SETTINGS]  # fmt: skip
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "elmforge.cli.main", *command], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 13:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "final").exists()
    assert 13 <= len(_curve(out)) < STEPS

    result = run_elmforge(*command)
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoints/step-" in result.stdout

    assert _curve(out) == _curve(reference)
    for name in ("final/model.safetensors", "adapter/adapter_model.safetensors"):
        expected, resumed = load_file(reference / name), load_file(out / name)
        assert resumed.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(resumed[key], value), (name, key)


class _Unsafe:  # unpickling this would print: weights_only must refuse it
    def __reduce__(self):
        return (print, ("a pickle ran",))


def _plant_pickle(checkpoint: Path, name: str) -> None:
    """``checkpoint/name`` replaced by a pickle, the manifest's digest updated to match."""
    from elmforge.train.checkpoint import sha256_file

    torch.save({"state": _Unsafe()}, checkpoint / name)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"size": (checkpoint / name).stat().st_size,
                               "sha256": sha256_file(checkpoint / name)}  # fmt: skip
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_pickled_state_falls_back_to_the_previous_checkpoint(tmp_path: Path, base_model_dir):
    """rng.pt/optimizer.pt replaced by a pickle: never unpickled, one line naming the file, and
    the resume falls back as for a digest mismatch; none usable is a one-line error."""
    import shutil

    from tests.cli_support import assert_clean_error

    data = write_json(tmp_path / "facts.json", instruction_rows())
    out = tmp_path / "run"
    settings = ["--peft", "lora", "--lora.r", "4", "--schedule.max_steps", "4",
                "--checkpoint.save_every", "2", "--checkpoint.keep_last", "0",
                "--train.num_threads", "1", "--log.progress", "none"]  # fmt: skip
    command = ["finetune", "sft", str(base_model_dir), "--data", str(data), "--out", str(out),
               *settings]  # fmt: skip
    assert run_elmforge(*command).returncode == 0
    for name in ("final", "adapter"):  # as if killed after its last checkpoint
        shutil.rmtree(out / name)
    first, last = sorted((out / "checkpoints").iterdir())
    _plant_pickle(last, "rng.pt")
    resumed = run_elmforge(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert "a pickle ran" not in resumed.stdout + resumed.stderr
    assert f"{last / 'rng.pt'}: refused as unsafe" in resumed.stdout
    assert f"resumed from checkpoints/{first.name}" in resumed.stdout

    for name in ("final", "adapter"):
        shutil.rmtree(out / name)
    for checkpoint in sorted((out / "checkpoints").iterdir()):
        _plant_pickle(checkpoint, "optimizer.pt")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = run_elmforge(*command)
    assert "a pickle ran" not in refused.stdout + refused.stderr
    assert_clean_error(refused, f"{out / 'checkpoints'}", "none of")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
