"""Real `elmforge serve` processes for the tests: started on 127.0.0.1 with ``--port 0`` (the
server binds a free port itself and prints it, so two test runs can never race for one), ready
once ``/health`` answers, always terminated."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ADDRESS = re.compile(r"on (http://127\.0\.0\.1:\d+)")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    stderr_path: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def health(self, api_key: str | None = None) -> dict:
        """``/health``; with an API key server, only a caller with the key sees the counters."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.get(f"{self.url}/health", headers=headers, timeout=10).json()


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


@contextlib.contextmanager
def running_server(
    model_dir: str | os.PathLike, *flags: str, log_dir: Path, timeout: float = 180
) -> Iterator[Server]:
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"serve-{time.monotonic_ns()}.stderr"
    command = [sys.executable, "-m", "elmforge.cli.main", "serve", str(model_dir)]
    command += ["--port", "0", *flags]
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{stderr_path.read_text()}")
            with contextlib.suppress(queue.Empty):
                found = ADDRESS.search(lines.get(timeout=0.5))
                url = found.group(1) if found else None
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server never became healthy:\n{stderr_path.read_text()}")
            time.sleep(0.2)
        yield Server(url, process, stderr_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_idle(server: Server, timeout: float = 30) -> dict:
    """``/health`` once the server has nothing running or waiting (failing after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while (health := server.health())["running"] or health["waiting"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    return health
