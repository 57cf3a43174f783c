"""Whole rows (every column) of data files and hub datasets, for data read as records rather than
documents (fine-tuning's rows): ``.json`` (an array of objects, or one object per line),
``.jsonl``, ``.parquet``, a directory of those (name order), or ``hf:org/name`` with a split.

The files are read by the same shard readers as the pretraining sources
(:mod:`elmforge.data.sources`: line by line, parquet batch by batch, hub datasets streamed); a row
that cannot be read stops with one line naming the file and the row (rows count from 1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmforge.data.sources import Shard, ShardFailure, iter_shard_rows
from elmforge.errors import DataError

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class RawRow:
    where: str
    values: Mapping[str, Any]


def data_files(path: Path) -> list[Path]:
    """The data files a path names: itself, or a directory's data files in name order."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no {', '.join(DATA_SUFFIXES)} files in this directory")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such data file or directory")
    if path.suffix not in DATA_SUFFIXES:
        raise DataError(f"{path}: unsupported data file (use {', '.join(DATA_SUFFIXES)})")
    return [path]


def _json_array(path: Path) -> Iterator[tuple[int, Any]] | None:
    """The objects of a ``.json`` file holding one array, or None for one object per line."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(64).decode("utf-8", errors="replace").lstrip()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if path.suffix != ".json" or not start.startswith("["):
        return None
    try:
        array = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except (ValueError, RecursionError) as err:  # nested thousands deep: RecursionError
        raise DataError(f"{path}: invalid JSON ({err})") from None
    return enumerate(array, start=1)


def _file_rows(path: Path) -> Iterator[tuple[int, Any]]:
    array = _json_array(path)
    if array is not None:
        yield from array
        return
    kind = "parquet" if path.suffix == ".parquet" else "jsonl"
    for row, _, payload in iter_shard_rows(Shard(str(path), kind, text_key=None)):
        if isinstance(payload, ShardFailure):
            raise DataError(f"{path}: {payload.problem}")
        if kind == "jsonl":
            try:
                payload = json.loads(payload)
            except UnicodeDecodeError:
                raise DataError(f"{path} row {row + 1}: not UTF-8 text") from None
            except (ValueError, RecursionError) as err:
                raise DataError(f"{path} row {row + 1}: invalid JSON ({err})") from None
        yield row + 1, payload


def read_records(spec: str | os.PathLike, split: str = "train") -> list[RawRow]:
    """Every row of ``spec`` (module docstring), each with where it came from."""
    text = str(spec)
    if text.startswith("hf:"):
        shard = Shard(text[3:], "hf", text_key=None, split=split)
        rows = [RawRow(f"{text}[{split}] row {row + 1}", values)
                for row, _, values in iter_shard_rows(shard)]  # fmt: skip
        if not rows:
            raise DataError(f"{text}: split {split!r} has no rows")
        return rows
    rows = []
    for path in data_files(Path(spec).expanduser()):
        found = 0
        for number, value in _file_rows(path):
            if not isinstance(value, Mapping):
                raise DataError(f"{path} row {number}: expected a JSON object with named columns")
            rows.append(RawRow(f"{path} row {number}", value))
            found += 1
        if not found:
            raise DataError(f"{path}: no rows (empty file)")
    return rows
