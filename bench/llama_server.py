"""llama.cpp's own `llama-server`, built once from the llama.cpp tree vendored in the pinned
llama-cpp-python sdist (the same llama.cpp the tests' GGUF checks run), for the serving benchmark
only: never in the tests.

    .venv/bin/python bench/llama_server.py        # build (minutes, once) and print the path

The binary is cached under ``~/.cache/elmforge/llama-server/<version>/`` (``$XDG_CACHE_HOME``);
the sdist comes from pip's cache or PyPI (``pip download --no-binary``). CPU build, native
instructions (as llama-cpp-python's own wheel build on this machine), no CURL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "elmforge" / "llama-server" / metadata.version("llama-cpp-python")


def llama_server_binary(log: bool = True) -> Path:
    """The cached ``llama-server`` binary, built first where it is not there."""
    target = cache_dir() / "llama-server"
    if target.is_file():
        return target
    version = metadata.version("llama-cpp-python")
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        if log:
            print(f"fetching the llama-cpp-python {version} sdist", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}",
             "--no-binary", ":all:", "--no-deps", "--quiet", "-d", str(work)],
            check=True,
        )  # fmt: skip
        (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        if log:
            print(f"building llama-server from {source.relative_to(work)} (minutes)", flush=True)
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j",
             str(os.cpu_count() or 2)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        built = next(build.rglob("llama-server"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.replace(target)  # a build cut short leaves no binary behind
    return target


if __name__ == "__main__":
    print(llama_server_binary())
