"""Shared helpers of the benchmark scripts: tables, JSON results and server processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from elmforge.environment import machine, versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def environment() -> dict:
    """The machine (CPU named as lscpu does), the threads torch uses, the versions that decide
    the figures, and the GPU if any."""
    return {
        **machine(torch.get_num_threads()),
        "versions": versions(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    tmp.replace(path)
    return path


# `elmforge serve --port 0` prints the address it bound.
SERVE_ADDRESS = re.compile(r"on (http://127\.0\.0\.1:\d+)")


@contextlib.contextmanager
def running_server(
    command: list[str], log: Path, url: str | None = None, timeout: float = 600
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run a server ``command`` (its output into ``log``) until the with-block ends, yielding
    (process, base URL) once ``URL/v1/models`` answers. Without ``url`` the address is read from
    the log, where ``elmforge serve --port 0`` prints it. Stopped with SIGTERM, then SIGKILL."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CI": "true", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if url is None and (found := SERVE_ADDRESS.search(log.read_text(errors="replace"))):
                url = found.group(1)
            if url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                        break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(command[:4])} did not start:\n{tail}")
            time.sleep(0.5)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
