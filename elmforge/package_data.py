"""Files that ship inside the package, found the same way in a checkout and in an installed wheel.

Run configs live in ``elmforge/configs/`` (package data, see pyproject.toml): the demo's
``tiny-cpu.yaml``, the four paper variants, CoreNet's OpenELM-270M config and data examples. Any
verb that reads a YAML config also accepts a packaged one by name (``--config tiny-cpu``,
``data inspect data/builtin``) when no file of that name exists.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
YAML_SUFFIXES = (".yaml", ".yml")


def config_path(name: str) -> Path:
    """The packaged config ``name`` (``tiny-cpu.yaml``, ``corenet/openelm_270M.yaml``)."""
    return CONFIG_DIR / name


def packaged_configs() -> list[str]:
    """Names of the packaged configs, without ``.yaml`` (``tiny-cpu``, ``data/builtin``...)."""
    return sorted(
        str(path.relative_to(CONFIG_DIR).with_suffix(""))
        for path in CONFIG_DIR.rglob("*")
        if path.suffix in YAML_SUFFIXES
    )


def find_config(spec: str | os.PathLike) -> Path:
    """``spec`` itself when it exists, else the packaged config it names (with or without
    ``.yaml``), else ``spec`` unchanged (the reader then reports the missing file)."""
    path = Path(spec)
    if path.exists() or path.is_absolute():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if candidate.is_file() and CONFIG_DIR in candidate.resolve().parents:
            return candidate
    return path
