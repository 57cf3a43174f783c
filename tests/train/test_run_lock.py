"""One writer per run directory (elmforge/locks.py), with real processes: a second writer on the
same --out refuses at once naming the holder's PID; the lock dies with its holder (SIGKILL
included) and leaves no file behind; other ranks of a torchrun launch take none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elmforge.locks import DirectoryBusyError, hold_directory
from tests.cli_support import assert_clean_error
from tests.train.helpers import micro_run, subprocess_env, write_yaml

HOLD = """
import sys, time
from elmforge.locks import hold_directory
with hold_directory(sys.argv[1], "pretrain"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(directory: Path, **env: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)],
        env={**subprocess_env(), **env}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    return process


def _stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(timeout=60)


def test_a_held_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        busy = f"{run}: process {holder.pid} is writing"
        with pytest.raises(DirectoryBusyError, match=busy), hold_directory(run, "finetune"):
            pass
    finally:
        _stop(holder)  # SIGKILL: no clean-up ran
    with hold_directory(run, "finetune"):  # the kernel dropped the dead holder's lock
        assert sorted(os.listdir(run)) == []  # and the lock is no file in the directory
    with hold_directory(tmp_path / "new", "finetune"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # made for the lock and left empty: removed again


def test_other_ranks_of_a_launch_take_no_lock(tmp_path: Path) -> None:
    tmp_path.joinpath("run").mkdir()
    holder = _holder(tmp_path / "run", RANK="1")
    try:
        with hold_directory(tmp_path / "run", "pretrain"):
            pass
    finally:
        _stop(holder)


@pytest.mark.slow
def test_a_second_pretrain_on_the_same_out_is_refused(tmp_path: Path, bpe_tokenizer_dir) -> None:
    config = micro_run(
        bpe_tokenizer_dir,
        schedule={"warmup_steps": 1, "max_steps": 100000},
        checkpoint={"save_every": 2, "keep_last": 2},
        log={"eval_batches": 0, "tensorboard": False, "plot": False, "progress": "none"},
    )
    write_yaml(tmp_path / "run.yaml", config)
    command = [sys.executable, "-m", "elmforge.cli.main", "pretrain", "--config",
               str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")]  # fmt: skip
    first = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "run").glob("checkpoints/step-*")):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert_clean_error(second, str(tmp_path / "run"), f"process {first.pid}", "--out")
        assert first.poll() is None  # the first run goes on
    finally:
        _stop(first)
    with hold_directory(tmp_path / "run", "pretrain"):  # free once its holder is gone
        assert not (tmp_path / "run" / ".lock").exists()
