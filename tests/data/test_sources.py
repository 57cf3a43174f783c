"""Sources: streaming readers, patterns, the built-in corpus and its split, bad rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from elmforge.data.sources import (
    BUILTIN_DOCS,
    BUILTIN_STDLIB,
    VALIDATION_PER_MILLE,
    in_validation_split,
    iter_shard_rows,
    iter_texts,
    resolve_source,
    stdlib_root,
)
from elmforge.errors import ConfigError, DataError
from tests.data.conftest import document, write_jsonl, write_parquet

TEXTS = [document(i) for i in range(10)]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json.gz", "txt"])
def test_every_format_streams_its_documents(tmp_path, suffix):
    path = tmp_path / f"shard.{suffix}"
    if suffix == "parquet":
        write_parquet(path, TEXTS, key="content")
    elif suffix == "txt":
        path.write_text(TEXTS[0], encoding="utf-8")
    else:
        write_jsonl(path, TEXTS, key="content", gz=suffix.endswith("gz"))
    expected = TEXTS[:1] if suffix == "txt" else TEXTS
    assert list(iter_texts({"file_name": str(path), "text_key": "content"})) == expected


def test_file_id_pattern_glob_and_missing_files(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / f"part-{i:05d}.jsonl", [document(i)])
    pattern = str(tmp_path / "part-{file_id:05d}.jsonl")
    texts = list(iter_texts({"file_name": pattern, "file_id_range": [0, 3]}))
    assert texts == [document(i) for i in range(3)]
    assert list(iter_texts(str(tmp_path / "part-*.jsonl"))) == texts
    with pytest.raises(DataError, match=r"part-00003\.jsonl: missing shard"):
        list(iter_texts({"file_name": pattern, "file_id_range": [0, 4]}))
    assert (
        list(iter_texts({"file_name": pattern, "file_id_range": [0, 4]}, max_bad_rows=1)) == texts
    )
    with pytest.raises(DataError, match="no file matches"):
        resolve_source({"file_name": pattern, "file_id_range": [7, 9]})
    with pytest.raises(DataError, match="no file matches"):
        resolve_source(str(tmp_path / "nothing-*.parquet"))


def test_source_specs_are_validated():
    with pytest.raises(ConfigError, match=r"source\.txt_key: unknown key"):
        resolve_source({"file_name": "x.jsonl", "txt_key": "text"})
    with pytest.raises(ConfigError, match="file_id_range: required"):
        resolve_source({"file_name": "x-{file_id:05d}.jsonl"})
    with pytest.raises(ConfigError, match="builtin:nope"):
        resolve_source({"name": "builtin:nope"})
    with pytest.raises(ConfigError, match="weight"):
        resolve_source({"name": BUILTIN_DOCS, "weight": 0})


def test_readers_resume_mid_shard(tmp_path):
    texts = [document(i) for i in range(11)]
    parquet = resolve_source(str(write_parquet(tmp_path / "a.parquet", texts)))[0].shards[0]
    assert [v for _, _, v in iter_shard_rows(parquet, start_row=6)] == texts[6:]
    jsonl = resolve_source(str(write_jsonl(tmp_path / "a.jsonl", texts)))[0].shards[0]
    rows = list(iter_shard_rows(jsonl))
    row, offset, _ = rows[4]
    resumed = list(iter_shard_rows(jsonl, start_row=row + 1, start_offset=offset))
    assert resumed == rows[5:]


def test_builtin_corpus_split_is_deterministic_and_disjoint():
    train, _ = resolve_source(BUILTIN_STDLIB, "train")
    validation, _ = resolve_source(BUILTIN_STDLIB, "validation")
    train_paths = {s.path for s in train.shards}
    validation_paths = {s.path for s in validation.shards}
    assert train_paths.isdisjoint(validation_paths)
    assert len(validation_paths) > 5 and len(train_paths) > 10 * len(validation_paths)
    # The split depends only on the relative name, never on the OS's file order.
    assert [s.path for s in train.shards] == sorted(train_paths)
    # Membership is the documented hash of the relative path, so every machine agrees.
    root = stdlib_root()
    for path in sorted(validation_paths)[:5] + sorted(train_paths)[:5]:
        relative = Path(path).relative_to(root).as_posix()
        digest = hashlib.sha256(relative.encode("utf-8")).digest()
        expected = int.from_bytes(digest[:8], "big") % 1000 < VALIDATION_PER_MILLE
        assert in_validation_split(relative) == expected == (path in validation_paths)
    docs_train = set(iter_texts(BUILTIN_DOCS, "train"))
    docs_validation = set(iter_texts(BUILTIN_DOCS, "validation"))
    assert docs_train and docs_validation and docs_train.isdisjoint(docs_validation)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"text": "fine"}\n{"body": "no text"}\n', r"bad\.jsonl: line 2: no 'text' field"),
        (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl: line 2: not UTF-8"),
        (b'{"text": "fine"}\n{"text": \n', r"bad\.jsonl: line 2: invalid JSON"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, content, problem):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem):
        list(iter_texts(str(path)))
    assert list(iter_texts(str(path), max_bad_rows=1)) == ["fine"]


def test_truncated_files_are_bad_not_fatal_crashes(tmp_path):
    texts = [document(i, words=200) for i in range(40)]
    parquet = write_parquet(tmp_path / "cut.parquet", texts)
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.parquet: row 0: not a readable parquet file"):
        list(iter_texts(str(parquet)))
    gz = write_jsonl(tmp_path / "cut.json.gz", texts, gz=True)
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.json\.gz: line \d+: truncated or corrupt"):
        list(iter_texts(str(gz)))
    partial = list(iter_texts(str(gz), max_bad_rows=1))
    assert 0 < len(partial) < len(texts) and partial == texts[: len(partial)]


def test_hub_source_offline_fails_cleanly(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hf:nobody/nothing: cannot stream"):
        list(iter_texts("hf:nobody/nothing"))
