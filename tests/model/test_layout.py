"""The model directory's layout: copying its files for a staging or output directory."""

from __future__ import annotations

import pytest

from elmforge.layout import copy_model_files


@pytest.mark.parametrize("weights", ["copy", "link", "skip"])
def test_copy_model_files_leaves_out_hidden_files_and_subdirectories(tmp_path, weights):
    source, target = tmp_path / "model", tmp_path / "target"
    (source / "sub").mkdir(parents=True)
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "extra.bin",
                 ".elmforge-output", ".x.tmp-1"):  # fmt: skip
        (source / name).write_text(name)
    (source / "sub" / "inner.txt").write_text("inner")
    copy_model_files(source, target, weights=weights)
    names = {"config.json", "tokenizer.json"}
    if weights != "skip":
        names |= {"model.safetensors", "extra.bin"}
    assert {p.name for p in target.iterdir()} == names
    for name in names:
        assert (target / name).read_text() == name
        assert (target / name).is_symlink() == (weights == "link" and name.startswith(("m", "e")))
