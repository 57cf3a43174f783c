"""Running the real `elmforge` command in a subprocess, and checking how it fails.

Every verb's bad-input table uses these, so "a clean failure" means the same everywhere: exit
status 2, one line on stderr that names the file or option, no traceback, and no file of an
existing run changed (compare :func:`tree_snapshot` before and after).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# Library warnings (a deprecation, a tokenizer notice) may precede the error line; only lines
# that start with the program's name count as the error.
ERROR_PREFIX = "elmforge"


def run_elmforge(
    *args: str,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """``python -m elmforge.cli.main ARGS`` as a real process (offline, CI mode)."""
    environment = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "elmforge.cli.main", *map(str, args)],
        cwd=cwd,
        env=environment,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *mentions: str) -> str:
    """Exit status 2, no traceback, exactly one error line on stderr naming each of ``mentions``."""
    stderr = proc.stderr
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, stderr
    for text in mentions:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    return errors[0]


def tree_snapshot(root: str | os.PathLike) -> dict[str, str]:
    """Relative path -> content hash (``<dir>`` for directories) of everything under ``root``."""
    root = Path(root)
    snapshot: dict[str, str] = {}
    if not root.exists():
        return snapshot
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            snapshot[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            snapshot[rel] = "<dir>"
        else:
            snapshot[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot
