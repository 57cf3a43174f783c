"""Shared test set-up: offline by construction, seeded, isolated from the developer's own
elmforge set-up, and where ../shared lives."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Nothing at test time may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

# Nothing of the developer's own set-up either: elmforge's user cache (an installed LLaMA-2
# tokenizer, BPE tokenizers trained by `data inspect`) is a fresh directory for the session, and
# $ELMFORGE_LLAMA2_TOKENIZER is unset. Other tools keep their caches (the hub cache, compiled
# torch extensions), which moving $XDG_CACHE_HOME would otherwise empty. The source checkout's
# ../shared/data fallback stays on (it is the file `llama2_tokenizer_path` gives); a test of the
# lookup itself switches it off with $ELMFORGE_NO_DEV_FALLBACK=1 (see `no_dev_fallback`).
_USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
os.environ.setdefault("HF_HOME", str(_USER_CACHE / "huggingface"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_USER_CACHE / "torch_extensions"))
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="elmforge-test-cache-"))
os.environ["XDG_CACHE_HOME"] = str(SESSION_CACHE)
os.environ.pop("ELMFORGE_LLAMA2_TOKENIZER", None)
os.environ.pop("ELMFORGE_NO_DEV_FALLBACK", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ELMFORGE_SHARED", REPO_ROOT.parent / "shared")).resolve()
SHARED_DATA = SHARED_DIR / "data"
LLAMA2_TOKENIZER = SHARED_DATA / "llama2-tokenizer.model"


def write_model_dir(
    directory: Path,
    tokenizer: Any = None,
    *,
    seed: int = 0,
    name: str | None = None,
    **fields: Any,
) -> Path:
    """The one way the tests make a model directory: a randomly initialised OpenELM (preset
    ``name``, or the tests' micro shape, with ``fields`` overriding its config, seeded) saved in
    HF layout, with ``tokenizer``'s files beside it when one is given."""
    import torch

    from elmforge.model.config import OpenELMConfig
    from elmforge.model.modeling import OpenELMForCausalLM
    from tests.shapes import micro_config

    torch.manual_seed(seed)
    config = micro_config(**fields) if name is None else OpenELMConfig.from_name(name, **fields)
    OpenELMForCausalLM(config).save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


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


@pytest.fixture
def no_dev_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLaMA-2's tokenizer is found as on a user's machine: only through
    $ELMFORGE_LLAMA2_TOKENIZER or the user cache, not the checkout's ../shared/data."""
    monkeypatch.setenv("ELMFORGE_NO_DEV_FALLBACK", "1")


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names that ``os.replace`` renames onto, in order (the rename itself happens)."""
    names: list[str] = []
    real_replace = os.replace

    def record(source: str | os.PathLike, target: str | os.PathLike) -> None:
        names.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", record)
    return names


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)
