"""Installed, not only editable: build a wheel, install it into a fresh environment outside the
checkout, and run the verbs a new user runs first from another directory."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from elmforge import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "elmforge"


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(the fresh environment's bin/, the environment to run it in, the wheel)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "ELMFORGE_SHARED", "ELMFORGE_LLAMA2_TOKENIZER")
    }
    # A user cache of its own: nothing found there, the LLaMA-2 tokenizer included.
    env.update({"CI": "true", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(root / "cache")})
    # Build from a copy of what a wheel is made of, so the checkout gets no build/ or egg-info.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "elmforge", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root),
          str(source)], root, env)  # fmt: skip
    (wheel,) = root.glob("elmforge-*.whl")
    # A fresh environment whose dependencies (torch, transformers, ...) come from this one without
    # the network: its site directories on a .pth path (their own .pth files, such as an editable
    # install of elmforge, are not processed, so only the wheel provides elmforge).
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    target = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  root, env).stdout.strip()  # fmt: skip
    dependencies = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if p]
    (Path(target) / "environment.pth").write_text("\n".join(dependencies) + "\n")
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         root, env)  # fmt: skip
    return venv / "bin", env, wheel


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(installed) -> None:
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        str(path.relative_to(REPO_ROOT))
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert shipped - names == set()
    assert "elmforge/configs/tiny-cpu.yaml" in names


@pytest.mark.slow
def test_installed_verbs_run_outside_the_checkout(installed, tmp_path: Path) -> None:
    bin_dir, env, _ = installed
    elmforge = str(bin_dir / "elmforge")
    where = _run([str(bin_dir / "python"), "-c", "import elmforge; print(elmforge.__file__)"],
                 tmp_path, env).stdout.strip()  # fmt: skip
    assert str(bin_dir.parent) in where and str(REPO_ROOT) not in where
    assert "pretrain" in _run([elmforge, "--help"], tmp_path, env).stdout
    assert _run([elmforge, "--version"], tmp_path, env).stdout.strip() == f"elmforge {__version__}"
    info = _run([elmforge, "info", "OpenELM-270M"], tmp_path, env).stdout
    assert "271,527,168" in info
    assert "packaged config" in _run([elmforge, "demo", "--help"], tmp_path, env).stdout
    # The demo's packaged config by name; no LLaMA-2 tokenizer here, so `auto` trains a BPE one.
    run = [elmforge, "pretrain", "--config", "tiny-cpu", "--out", "run"]
    run += ["--schedule.max_steps", "2", "--schedule.warmup_steps", "1", "--data.seq_len", "32",
            "--data.bpe_vocab_size", "300", "--train.micro_batch_size", "2",
            "--log.eval_batches", "0", "--checkpoint.save_every", "2"]  # fmt: skip
    proc = _run(run, tmp_path, env)
    assert "final model:" in proc.stdout
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
