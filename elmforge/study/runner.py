"""Training runs of a study as parallel processes, with progress, ETA and clean failure.

Each job is one process (``python -m elmforge.study.job``) writing its own run directory and
log; at most one job per slot runs at a time. A slot is a set of environment variables: one CPU
thread per run on the CPU (several single-thread runs use two cores better than one run on two
threads: measured 5,700 tokens/s per run with two runs side by side on this project's 2-core
machine, against 689 tokens/s for one two-thread run while other work shared the cores), or one
GPU per run (``CUDA_VISIBLE_DEVICES``).

A job that fails stops the study: the others are terminated (each resumes from its newest
checkpoint next time) and the error names the run, its last error line and its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elmforge.errors import ElmforgeError
from elmforge.layout import RunDir
from elmforge.progress import Report, say

# Seconds between status lines (rate and ETA of every running job).
STATUS_EVERY_S = 60.0
TERMINATE_GRACE_S = 30.0


@dataclass
class Job:
    name: str
    command: list[str]
    log: Path
    run_dir: Path
    max_steps: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    slot: int
    started: float
    log_handle: object


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the study process dies (even by SIGKILL), so
    no orphaned run keeps writing a run directory that a resumed study trains again (Linux)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _last_metrics(run_dir: Path) -> dict:
    """The newest training line of a run's metrics.jsonl (empty before the first)."""
    path = RunDir(run_dir).metrics
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    import json

    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "tokens_per_s" in record:
            return record
    return {}


def _error_line(log: Path) -> str:
    """The line of a failed job's log that says why (the CLI's one-line error if any)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith("elmforge"):
            return line
    return lines[-1] if lines else "no output"


class _Progress:
    def __init__(self, total: int, parallel: int, report: Report) -> None:
        self.total, self.parallel, self.report = total, parallel, report
        self.durations: list[float] = []
        self.last = time.monotonic()

    def status(self, running: Sequence[_Running], pending: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < STATUS_EVERY_S:
            return
        self.last = now
        parts, remaining, estimates = [], [], []
        for item in running:
            record = _last_metrics(item.job.run_dir)
            step, eta = record.get("step"), record.get("eta_s")
            rate = record.get("tokens_per_s")
            rate_text = f", {rate:,.0f} tok/s" if isinstance(rate, (int, float)) else ""
            parts.append(
                f"{item.job.name} step {step or 0}/{item.job.max_steps}{rate_text}, "
                f"ETA {format_seconds(eta)}"
            )
            if isinstance(eta, (int, float)):
                remaining.append(eta)
                estimates.append(now - item.started + eta)
        done = self.total - pending - len(running)
        # A waiting run will take about as long as the finished ones did (or, before any
        # finished, as the running ones will).
        known = self.durations or estimates
        eta = None
        if known and (remaining or not running):
            per_run = sorted(known)[len(known) // 2]
            waves = -(-pending // self.parallel)
            eta = (max(remaining) if remaining else 0.0) + waves * per_run
        self.report(
            f"[study] {done}/{self.total} runs done; "
            + ("; ".join(parts) if parts else "starting")
            + f"; study ETA {format_seconds(eta)}"
        )


def run_jobs(jobs: Sequence[Job], slots: Sequence[dict[str, str]], report: Report = say) -> None:
    """Run ``jobs`` with at most ``len(slots)`` at a time; raise on the first failure."""
    if not slots:
        raise ValueError("run_jobs: no slots")
    pending = deque(jobs)
    running: list[_Running] = []
    free = list(range(len(slots)))
    progress = _Progress(len(jobs), len(slots), report)
    try:
        while pending or running:
            while pending and free:
                job, slot = pending.popleft(), free.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                handle = open(job.log, "a", encoding="utf-8")  # noqa: SIM115 (closed on exit)
                env = {**os.environ, **job.env, **slots[slot]}
                process = subprocess.Popen(
                    job.command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                )  # fmt: skip
                running.append(_Running(job, process, slot, time.monotonic(), handle))
                report(f"[study] started {job.name} (log: {job.log})")
            time.sleep(0.5)
            for item in list(running):
                code = item.process.poll()
                if code is None:
                    continue
                running.remove(item)
                item.log_handle.close()
                free.append(item.slot)
                if code != 0:
                    raise ElmforgeError(
                        f"run {item.job.name} failed (exit {code}): {_error_line(item.job.log)} "
                        f"(log: {item.job.log}); re-run the same command to resume"
                    )
                elapsed = time.monotonic() - item.started
                progress.durations.append(elapsed)
                report(f"[study] finished {item.job.name} in {format_seconds(elapsed)}")
            progress.status(running, len(pending))
    finally:
        _terminate(running)


def _terminate(running: list[_Running]) -> None:
    """Stop the jobs still running (SIGTERM, then SIGKILL after a grace period)."""
    for item in running:
        if item.process.poll() is None:
            item.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for item in running:
        try:
            item.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()
        item.log_handle.close()
