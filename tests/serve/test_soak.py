"""A short soak: bench/serve_soak.py for 30 s against a real `elmforge serve` (8 clients,
completions and chat, streamed or not, 10% of the streams dropped mid-way): no error, no
traceback in the server's log, nothing left running or waiting, memory flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_thirty_seconds_of_mixed_load(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
           os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "serve_soak.py"), "--minutes", "0.5",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["errors"] == 0 and results["left running/waiting"] == 0
    assert results["requests completed"] > 0
    assert results["RSS growth (MiB)"] < 100
