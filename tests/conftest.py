"""Shared test set-up: offline by construction, seeded, and where ../shared lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing at test time may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ELMFORGE_SHARED", REPO_ROOT.parent / "shared")).resolve()
SHARED_DATA = SHARED_DIR / "data"
LLAMA2_TOKENIZER = SHARED_DATA / "llama2-tokenizer.model"


def require_shared(path: Path = SHARED_DATA) -> Path:
    """Skip the calling test, with a reason, where the shared data files are absent."""
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data), which is absent here")
    return path


@pytest.fixture(scope="session")
def llama2_tokenizer_path() -> Path:
    return require_shared(LLAMA2_TOKENIZER)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared(SHARED_DIR)


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)
