"""A full disk is one line saying so, and leaves no temporaries: simulated at the system call
where a full disk surfaces (fsync), and, where this machine lets a test mount one, on a real
size-limited tmpfs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import assert_clean_error
from tests.shapes import micro_config

REPO_ROOT = Path(__file__).resolve().parents[2]
# os.fsync fails as it does on a full disk (delayed allocation reports ENOSPC there).
FULL_DISK = """
import errno, os, sys
def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = fsync
from elmforge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "CI": "true", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (["info", "OpenELM-tiny", "--plot", "plot.png"], "plot.png"),
        (
            ["tokenizer", "train", "--data", "builtin:python-docs", "--max-documents", "5",
             "--vocab-size", "300", "--out", "tok"],
            "tok",
        ),
    ],
)  # fmt: skip
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, args, output) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_clean_error(proc, output, "the disk is full")
    assert list(tmp_path.iterdir()) == []


def _mount_command(directory: Path) -> list[str] | None:
    """A command prefix that runs a shell in a private mount namespace with a 1 MiB tmpfs on
    ``directory``; None where this machine does not allow it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    mount = f"mount -t tmpfs -o size=1m tmpfs {directory}"
    for prefix in ([unshare, "-m"], [unshare, "-r", "-m"]):
        probe = subprocess.run([*prefix, "sh", "-c", mount], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_converting_onto_a_full_tmpfs(tmp_path: Path) -> None:
    from elmforge import OpenELMForCausalLM
    from elmforge.model.convert import hf_to_corenet

    small = tmp_path / "small"
    small.mkdir()
    prefix = _mount_command(small)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs root or user namespaces)")
    model = tmp_path / "model"
    OpenELMForCausalLM(micro_config()).save_pretrained(model)
    checkpoint = hf_to_corenet(model, tmp_path / "model.pt")
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {small} && "
        f"head -c 900000 /dev/zero > {small}/filler && "
        f"{sys.executable} -m elmforge.cli.main convert corenet-to-hf {checkpoint} {small}/hf "
        f"--name {model}; status=$?; ls -A {small} >&2; exit $status"
    )
    proc = subprocess.run(
        [*prefix, "sh", "-c", script], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert_clean_error(proc, f"{small}/hf", "the disk is full")
    assert proc.stderr.strip().splitlines()[-1] == "filler"  # nothing else left on the disk


# The disk fills up only for writes whose path contains sys.argv[1] (a later checkpoint, an
# output), so what was written before it succeeds.
FULL_FOR = """
import errno, os, sys
marker = sys.argv.pop(1)
real_fsync = os.fsync
def fsync(fd):
    if marker in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_fsync(fd)
os.fsync = fsync
from elmforge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run_full_for(marker: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FULL_FOR, marker, *map(str, args)],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def finetune_inputs(tmp_path_factory) -> dict[str, Path]:
    from elmforge.data.tokenizer import train_bpe_tokenizer
    from tests.finetune.conftest import (
        instruction_rows,
        make_model_dir,
        tokenizer_corpus,
        write_json,
    )

    root = tmp_path_factory.mktemp("full-disk-finetune")
    tokenizer = train_bpe_tokenizer(tokenizer_corpus(), vocab_size=400, min_frequency=1)
    return {
        "model": make_model_dir(root / "base", tokenizer),
        "data": write_json(root / "facts.json", instruction_rows()),
    }


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_full_disk_while_finetuning_keeps_the_previous_checkpoint(tmp_path, finetune_inputs):
    from elmforge.files import is_temporary
    from elmforge.train.checkpoint import verify_checkpoint

    out = tmp_path / "run"
    command = ["finetune", "sft", finetune_inputs["model"], "--data", finetune_inputs["data"],
               "--out", out, "--peft", "lora", "--lora.r", "4", "--schedule.max_steps", "4",
               "--checkpoint.save_every", "2", "--checkpoint.keep_last", "0",
               "--train.num_threads", "1", "--log.progress", "none"]  # fmt: skip
    proc = _run_full_for("step-00000004", *command, cwd=tmp_path)
    assert_clean_error(proc, "step-00000004", "the disk is full")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    verify_checkpoint(out / "checkpoints" / "step-00000002")
    assert [p for p in out.rglob("*") if is_temporary(p.name)] == []
    resumed = subprocess.run(
        [sys.executable, "-m", "elmforge.cli.main", *map(str, command)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoints/step-00000002" in resumed.stdout


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_full_disk_while_merging_keeps_the_previous_output(tmp_path, finetune_inputs):
    from elmforge.finetune import adapters
    from elmforge.model.convert import load_pretrained
    from tests.cli_support import run_elmforge, tree_snapshot

    model = finetune_inputs["model"]
    peft_model = adapters.add_adapter(
        load_pretrained(model), adapters.lora_config("lora", 4, 8, 0.0, ["qkv_proj"])
    )
    adapters.save_adapter(peft_model, tmp_path / "adapter", str(model))
    merge = ["merge-adapter", model, tmp_path / "adapter", "--out", tmp_path / "merged"]
    assert run_elmforge(*merge).returncode == 0
    before = tree_snapshot(tmp_path / "merged")
    proc = _run_full_for("merged", *merge, "--force", cwd=tmp_path)
    assert_clean_error(proc, "merged", "the disk is full")
    assert tree_snapshot(tmp_path / "merged") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]
