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
        (["info", "OpenELM-micro", "--plot", "plot.png"], "plot.png"),
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
    from elmforge import OpenELMConfig, OpenELMForCausalLM
    from elmforge.model.convert import hf_to_corenet

    small = tmp_path / "small"
    small.mkdir()
    prefix = _mount_command(small)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs root or user namespaces)")
    model = tmp_path / "model"
    OpenELMForCausalLM(OpenELMConfig.from_name("OpenELM-micro")).save_pretrained(model)
    checkpoint = hf_to_corenet(model, tmp_path / "model.pt")
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {small} && "
        f"head -c 900000 /dev/zero > {small}/filler && "
        f"{sys.executable} -m elmforge.cli.main convert corenet-to-hf {checkpoint} {small}/hf "
        f"--name OpenELM-micro; status=$?; ls -A {small} >&2; exit $status"
    )
    proc = subprocess.run(
        [*prefix, "sh", "-c", script], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert_clean_error(proc, f"{small}/hf", "the disk is full")
    assert proc.stderr.strip().splitlines()[-1] == "filler"  # nothing else left on the disk
