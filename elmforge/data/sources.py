"""Where documents come from: local shards, the built-in corpus, Hugging Face datasets.

A *source* is described the way CoreNet describes one::

    {"file_name": "shards/refinedweb-{file_id:05d}.parquet", "file_id_range": [0, 64],
     "text_key": "content", "weight": 1.0}
    {"name": "builtin:python-stdlib"}      # the standard library's .py files
    {"name": "builtin:python-docs"}        # pydoc's topic documentation
    {"name": "hf:org/name"}                # a hub dataset, streamed (needs a network)
    "path/or/glob/*.jsonl"                 # shorthand for {"file_name": ...}

It resolves to a list of :class:`Shard` s (a file, a Python source file, the pydoc topics, a
hub dataset). Shards are read row by row in a streaming way (parquet batch by batch, jsonl and
json.gz line by line), so memory stays bounded whatever a shard's size, and a read can start at
a saved position (a parquet row group, a byte offset in a plain jsonl file) instead of the
shard's beginning. Rows that cannot be read come back as :class:`BadRow` naming file and row,
so the caller decides whether to skip and count or to stop.

We read files ourselves rather than through ``datasets`` because exact, cheap resumption at a
row needs control over the readers (``datasets`` streaming can only skip by re-reading).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import re
import sysconfig
import tokenize
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmforge.errors import ConfigError, DataError

BUILTIN_STDLIB = "builtin:python-stdlib"
BUILTIN_DOCS = "builtin:python-docs"
BUILTIN_SOURCES = (BUILTIN_STDLIB, BUILTIN_DOCS)
SPLITS = ("train", "validation")
# Share of the built-in corpus held out for validation, decided per file / topic by a stable
# hash of its name (never by the OS's file order), so the split is the same on every machine.
VALIDATION_PER_MILLE = 50
# Test suites of the standard library hold deliberately broken or oddly encoded files.
_STDLIB_SKIPPED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
}
_FILE_ID_FIELD = re.compile(r"\{file_id(:[^}]*)?\}")
SOURCE_KEYS = ("name", "file_name", "file_id_range", "text_key", "weight")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Shard:
    """One unit of reading: a file, or the pydoc topics, or a hub dataset."""

    path: str  # file path; for kind "topics" the topic split, for "hf" the dataset name
    kind: str  # parquet | jsonl | jsonl.gz | txt | pyfile | topics | hf
    text_key: str | None = "text"  # None: whole rows (parquet, hf), for data.records
    split: str = "train"  # used by the "topics" and "hf" kinds

    def describe(self, row: int | None = None) -> str:
        where = {"topics": "pydoc_data.topics", "hf": f"hf:{self.path}"}.get(self.kind, self.path)
        if row is None:
            return where
        unit = "line" if self.kind in ("jsonl", "jsonl.gz") else "row"
        number = row + 1 if unit == "line" else row
        return f"{where}: {unit} {number}"


@dataclass(frozen=True)
class BadRow:
    """A row (or the rest of a shard) that could not be read."""

    shard: Shard
    row: int
    problem: str

    def message(self) -> str:
        return f"{self.shard.describe(self.row)}: {self.problem}"


@dataclass(frozen=True)
class ShardFailure:
    """Yielded by a shard reader when the shard cannot be read any further (missing, truncated)."""

    problem: str


@dataclass
class ResolvedSource:
    """A source with its shard list. ``shards`` is in a canonical (sorted) order."""

    name: str
    shards: list[Shard]
    weight: float = 1.0
    spec: dict[str, Any] = field(default_factory=dict)


def normalize_source(source: dict | str | os.PathLike, where: str = "source") -> dict[str, Any]:
    """A source spec as a dict with known keys only (``ConfigError`` naming ``where`` if not)."""
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith(("builtin:", "hf:")):
            return {"name": text}
        return {"file_name": text}
    if not isinstance(source, dict):
        raise ConfigError(f"{where}: expected a mapping or a string, got {type(source).__name__}")
    for key in source:
        if key not in SOURCE_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(SOURCE_KEYS)})")
    spec = dict(source)
    if ("name" in spec) == ("file_name" in spec):
        raise ConfigError(f"{where}: give exactly one of 'name' (builtin:/hf:) or 'file_name'")
    if "name" in spec:
        name = spec["name"]
        if not isinstance(name, str) or not name.startswith(("builtin:", "hf:")):
            raise ConfigError(f"{where}.name: {name!r} is not builtin:... or hf:org/name")
        if name.startswith("builtin:") and name not in BUILTIN_SOURCES:
            raise ConfigError(
                f"{where}.name: {name!r} unknown (known: {', '.join(BUILTIN_SOURCES)})"
            )
    else:
        if not isinstance(spec["file_name"], (str, os.PathLike)):
            raise ConfigError(f"{where}.file_name: expected a string")
        spec["file_name"] = str(spec["file_name"])
    if "text_key" in spec and not isinstance(spec["text_key"], str):
        raise ConfigError(f"{where}.text_key: expected a string")
    if "weight" in spec:
        weight = spec["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{where}.weight: {weight!r} must be a positive number")
        spec["weight"] = float(weight)
    if "file_id_range" in spec:
        id_range = spec["file_id_range"]
        if (
            not isinstance(id_range, (list, tuple))
            or len(id_range) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in id_range)
            or not 0 <= id_range[0] < id_range[1]
        ):
            raise ConfigError(
                f"{where}.file_id_range: {id_range!r} must be [start, end), start < end"
            )
        spec["file_id_range"] = [int(id_range[0]), int(id_range[1])]
        if "file_name" not in spec or not _FILE_ID_FIELD.search(spec["file_name"]):
            raise ConfigError(f"{where}.file_id_range: file_name has no {{file_id:05d}} field")
    elif "file_name" in spec and _FILE_ID_FIELD.search(spec["file_name"]):
        raise ConfigError(f"{where}.file_id_range: required with a {{file_id}} pattern")
    return spec


def source_name(spec: dict[str, Any]) -> str:
    return spec.get("name") or spec["file_name"]


def in_validation_split(name: str) -> bool:
    """Whether a built-in document (by relative path or topic name) is held out for validation."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < VALIDATION_PER_MILLE


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split {split!r}: unknown (known: {', '.join(SPLITS)})")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _builtin_stdlib_shards(split: str) -> list[Shard]:
    root = stdlib_root()
    relative_paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _STDLIB_SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py"):
                relative_paths.append(os.path.relpath(os.path.join(directory, name), root))
    relative_paths = sorted(p.replace(os.sep, "/") for p in relative_paths)
    return [
        Shard(str(root / rel), "pyfile")
        for rel in relative_paths
        if in_validation_split(rel) == (split == "validation")
    ]


def _file_kind(path: str) -> str:
    lower = path.lower()
    for suffix, kind in (
        (".parquet", "parquet"),
        (".jsonl.gz", "jsonl.gz"),
        (".json.gz", "jsonl.gz"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".txt", "txt"),
    ):
        if lower.endswith(suffix):
            return kind
    raise DataError(f"{path}: unsupported file type (use .parquet, .jsonl, .json.gz or .txt)")


def _file_shards(spec: dict[str, Any]) -> tuple[list[Shard], list[str]]:
    """Shards of a file source and the expected files that are missing."""
    pattern = os.path.expanduser(spec["file_name"])
    text_key = spec.get("text_key", "text")
    if "file_id_range" in spec:
        start, end = spec["file_id_range"]
        try:
            paths = [pattern.format(file_id=i) for i in range(start, end)]
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"{spec['file_name']}: bad file_name pattern ({err})") from None
        missing = [p for p in paths if not os.path.isfile(p)]
        if len(missing) == len(paths):
            raise DataError(f"{spec['file_name']}: no file matches (ids {start}..{end - 1})")
    else:
        paths = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        paths = [p for p in paths if os.path.isfile(p)]
        if not paths:
            raise DataError(f"{spec['file_name']}: no file matches")
        missing = []
    return [Shard(p, _file_kind(p), text_key) for p in paths], missing


def resolve_source(
    source: dict | str | os.PathLike, split: str = "train", where: str = "source"
) -> tuple[ResolvedSource, list[str]]:
    """The shards of a source for ``split`` and the list of expected-but-missing files.

    Built-in sources are split by a stable hash; ``hf:`` sources use the hub's split of that
    name; file sources are what they name whatever the split (point a separate source at your
    validation shards). A pattern that matches no file raises ``DataError``.
    """
    _check_split(split)
    spec = normalize_source(source, where)
    name = source_name(spec)
    weight = spec.get("weight", 1.0)
    missing: list[str] = []
    if name == BUILTIN_STDLIB:
        shards = _builtin_stdlib_shards(split)
    elif name == BUILTIN_DOCS:
        shards = [Shard(split, "topics")]
    elif name.startswith("hf:"):
        shards = [Shard(name[3:], "hf", spec.get("text_key", "text"), split)]
    else:
        shards, missing = _file_shards(spec)
    if not shards:
        raise DataError(f"{name}: no documents in split {split!r}")
    return ResolvedSource(name, shards, weight, spec), missing


# --- shard readers ---------------------------------------------------------------------------
# Each yields (row, offset_after, payload) from ``start_row``; ``offset_after`` is the byte
# offset just past the row where the format allows seeking to it (plain jsonl), else None. A
# payload is the raw row (bytes line, parquet value, text) or a ShardFailure, after which the
# reader stops.

RowStream = Iterator[tuple[int, "int | None", Any]]


def iter_shard_rows(shard: Shard, start_row: int = 0, start_offset: int | None = None) -> RowStream:
    reader = _READERS[shard.kind]
    return reader(shard, start_row, start_offset)


def _read_lines(shard: Shard, start_row: int, start_offset: int | None) -> RowStream:
    compressed = shard.kind == "jsonl.gz"
    row = 0
    try:
        handle = gzip.open(shard.path, "rb") if compressed else open(shard.path, "rb")  # noqa: SIM115
    except OSError as err:
        yield start_row, None, ShardFailure(f"cannot open ({err.strerror or err})")
        return
    with handle:
        offset = None
        if not compressed:
            offset = 0
            if start_offset is not None:
                handle.seek(start_offset)
                offset, row = start_offset, start_row
        try:
            for line in handle:
                if offset is not None:
                    offset += len(line)
                if row >= start_row and line.strip():
                    yield row, offset, line
                row += 1
        except (EOFError, OSError, zlib.error) as err:
            yield row, None, ShardFailure(f"truncated or corrupt ({err})")


def _read_parquet(shard: Shard, start_row: int, start_offset: int | None) -> RowStream:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(shard.path)
        names = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as err:
        yield start_row, None, ShardFailure(f"not a readable parquet file ({err})")
        return
    if shard.text_key is not None and shard.text_key not in names:
        problem = f"no column {shard.text_key!r} (columns: {', '.join(names)})"
        yield start_row, None, ShardFailure(problem)
        return
    # Start at the row group holding start_row, so resuming does not re-read the shard.
    metadata = parquet.metadata
    first_group, row = 0, 0
    while first_group < metadata.num_row_groups:
        group_rows = metadata.row_group(first_group).num_rows
        if row + group_rows > start_row:
            break
        row += group_rows
        first_group += 1
    if first_group == metadata.num_row_groups:
        return
    try:
        batches = parquet.iter_batches(
            batch_size=PARQUET_BATCH_ROWS,
            columns=None if shard.text_key is None else [shard.text_key],
            row_groups=range(first_group, metadata.num_row_groups),
        )
        for batch in batches:
            # text_key None: whole rows (every column), as data.records reads them.
            values = batch.to_pylist() if shard.text_key is None else batch.column(0).to_pylist()
            for value in values:
                if row >= start_row:
                    yield row, None, value
                row += 1
    except (OSError, pa.ArrowException) as err:
        yield row, None, ShardFailure(f"truncated or corrupt ({err})")
    finally:
        parquet.close()


def _read_whole_file(shard: Shard, start_row: int, start_offset: int | None) -> RowStream:
    if start_row > 0:
        return
    try:
        yield 0, None, Path(shard.path).read_bytes()
    except OSError as err:
        yield 0, None, ShardFailure(f"cannot read ({err.strerror or err})")


def _read_topics(shard: Shard, start_row: int, start_offset: int | None) -> RowStream:
    from pydoc_data.topics import topics

    names = sorted(n for n in topics if in_validation_split(n) == (shard.path == "validation"))
    for row in range(start_row, len(names)):
        yield row, None, topics[names[row]]


HUB_BATCH_ROWS = 256


def _read_hub(shard: Shard, start_row: int, start_offset: int | None) -> RowStream:
    try:
        import datasets

        dataset = datasets.load_dataset(shard.path, split=shard.split, streaming=True)
        # Iterating the dataset itself inside a DataLoader worker makes `datasets` keep only
        # that worker's share of the hub shards, on top of our own row striding (most rows would
        # never be read); `iter(batch_size=...)` reads every row, and the reader keeps its own.
        row = 0
        for batch in dataset.iter(batch_size=HUB_BATCH_ROWS):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                if row >= start_row:
                    yield row, None, dict(zip(columns, values))
                row += 1
    except Exception as err:  # the hub client raises many types (offline, missing, auth)
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"hf:{shard.path}: cannot stream split {shard.split!r} ({problem}); "
            "hub datasets need a network (HF_DATASETS_OFFLINE is set?)"
        ) from None


_READERS = {
    "jsonl": _read_lines,
    "jsonl.gz": _read_lines,
    "parquet": _read_parquet,
    "txt": _read_whole_file,
    "pyfile": _read_whole_file,
    "topics": _read_topics,
    "hf": _read_hub,
}


def decode_row(shard: Shard, row: int, payload: Any) -> str | BadRow:
    """The text of a raw row, or a BadRow saying why there is none."""
    kind = shard.kind
    try:
        if kind in ("jsonl", "jsonl.gz"):
            try:
                record = json.loads(payload)
            except UnicodeDecodeError:
                return BadRow(shard, row, "not UTF-8")
            except (ValueError, RecursionError) as err:
                return BadRow(shard, row, f"invalid JSON ({err})")
            if not isinstance(record, dict):
                return BadRow(shard, row, "not a JSON object")
            if shard.text_key not in record:
                return BadRow(shard, row, f"no {shard.text_key!r} field")
            payload = record[shard.text_key]
        elif kind == "hf":
            if shard.text_key not in payload:
                return BadRow(shard, row, f"no {shard.text_key!r} field")
            payload = payload[shard.text_key]
        elif kind == "pyfile":
            encoding, _ = tokenize.detect_encoding(io.BytesIO(payload).readline)
            payload = payload.decode(encoding)
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8")
    except (UnicodeDecodeError, SyntaxError, LookupError):
        return BadRow(shard, row, "not UTF-8 (or not in its declared encoding)")
    if payload is None:
        return BadRow(shard, row, f"{shard.text_key!r} is null")
    if not isinstance(payload, str):
        return BadRow(shard, row, f"{shard.text_key!r} is a {type(payload).__name__}, not text")
    return payload


def iter_rows(
    source: dict | str | os.PathLike | ResolvedSource,
    split: str = "train",
    max_bad_rows: int = 0,
    missing: Sequence[str] = (),
) -> Iterator[str | BadRow]:
    """The documents of one source in canonical order, with a BadRow for each unreadable row.

    More than ``max_bad_rows`` bad rows (missing shards included) raise ``DataError`` naming
    the file and row of the last one.
    """
    if not isinstance(source, ResolvedSource):
        source, missing = resolve_source(source, split)
    bad = len(missing)
    if bad > max_bad_rows:
        raise DataError(f"{missing[0]}: missing shard ({bad} missing, max_bad_rows={max_bad_rows})")
    for shard in source.shards:
        if shard.path in missing:
            continue
        for row, _, payload in iter_shard_rows(shard):
            if isinstance(payload, ShardFailure):
                text: str | BadRow = BadRow(shard, row, payload.problem)
            else:
                text = decode_row(shard, row, payload)
            if isinstance(text, BadRow):
                bad += 1
                if bad > max_bad_rows:
                    raise DataError(f"{text.message()} (max_bad_rows={max_bad_rows})")
            yield text


def iter_texts(
    source: dict | str | os.PathLike, split: str = "train", max_bad_rows: int = 0
) -> Iterator[str]:
    """The raw documents of one source, streaming, in the source's canonical order.

    ``source`` is any source spec (see the module docstring). Rows that cannot be read are
    skipped up to ``max_bad_rows`` in total; one more raises ``DataError`` naming file and row.
    Used by perplexity evaluation and tokenizer training.
    """
    for text in iter_rows(source, split, max_bad_rows):
        if isinstance(text, str):
            yield text
