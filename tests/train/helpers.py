"""Builders shared by the training tests: a micro run config on the built-in corpus."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.shapes import micro_model_section

REPO_ROOT = Path(__file__).resolve().parents[2]


def micro_run(tokenizer_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A micro-shape run on pydoc's topics: seq_len 32, a handful of steps, one thread."""
    run: dict[str, Any] = {
        "model": micro_model_section(),
        "data": {
            "sources": [{"name": "builtin:python-docs"}],
            "tokenizer": str(tokenizer_dir),
            "seq_len": 32,
            "min_tokens": 8,
            "min_characters": 50,
            "shuffle_buffer": 8,
        },
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2, "max_steps": 8},
        "train": {"micro_batch_size": 4, "device": "cpu", "num_threads": 1},
        "checkpoint": {"save_every": 4, "keep_last": 3},
        "log": {"log_every": 1, "eval_every": 4, "eval_batches": 2, "progress": "plain"},
    }
    run = copy.deepcopy(run)
    for section, values in sections.items():
        if isinstance(values, dict):
            run.setdefault(section, {}).update(values)
        else:
            run[section] = values
    return run


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, CI="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def elmforge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "elmforge.cli.main", *args]


def run_elmforge(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        elmforge_command(*args),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def safetensors_state(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


TIMING_KEYS = {"tokens_per_s", "mfu", "elapsed_s", "eta_s"}


def learning_curve(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields (which no two runs share)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run_dir)]
