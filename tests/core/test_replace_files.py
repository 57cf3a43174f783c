"""files.replace_files: a set of files joins a directory that holds others (tokenizer files in a
model directory): every file whole, the one readers look for last, deletions after the writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from elmforge.errors import ElmforgeError
from elmforge.files import replace_files


def contents(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_files_replace_their_namesakes_in_order_then_deletions(tmp_path, renames):
    (tmp_path / "weights").write_text("kept")
    (tmp_path / "index.json").write_text("old index")
    (tmp_path / "stale.model").write_text("stale")
    old = os.umask(0o027)
    try:
        with replace_files(tmp_path, last=("index.json",), remove=("stale.model", "b")) as stage:
            assert stage.parent == tmp_path  # same file system: renames, not copies
            for name in ("index.json", "a", "b"):
                (stage / name).write_text(f"new {name}")
    finally:
        os.umask(old)
    assert renames[-1] == "index.json" and sorted(renames) == ["a", "b", "index.json"]
    # "b" was staged, so it is not deleted; the stale file is, after the writes.
    assert contents(tmp_path) == {"a": "new a", "b": "new b", "index.json": "new index.json",
                                  "weights": "kept"}  # fmt: skip
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640


def test_a_failed_rename_deletes_nothing_and_leaves_no_staging(tmp_path, monkeypatch):
    (tmp_path / "index.json").write_text("old index")
    (tmp_path / "stale.model").write_text("stale")
    before = contents(tmp_path)
    real_replace = os.replace

    def full_disk(source, target):
        if Path(target).name == "index.json":
            raise OSError(28, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    replacing = replace_files(tmp_path, last=("index.json",), remove=("stale.model",))
    with pytest.raises(ElmforgeError, match="disk is full"), replacing as stage:
        (stage / "a").write_text("new a")
        (stage / "index.json").write_text("new index")
    assert contents(tmp_path) == {**before, "a": "new a"}  # stale.model still there


def test_an_error_while_staging_changes_nothing(tmp_path):
    (tmp_path / "index.json").write_text("old index")
    with pytest.raises(RuntimeError), replace_files(tmp_path, remove=("index.json",)) as stage:
        (stage / "index.json").write_text("half")
        raise RuntimeError("the writer failed")
    assert contents(tmp_path) == {"index.json": "old index"}
