"""`elmforge data inspect` and `elmforge tokenizer train`, in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from elmforge.cli.main import main
from tests.data.conftest import document, write_jsonl


def write_config(tmp_path, data: dict):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_data_inspect_json_reports_every_source_and_a_total(tmp_path, capsys, bpe_tokenizer):
    tokenizer_dir = tmp_path / "tok"
    bpe_tokenizer.save_pretrained(tokenizer_dir)
    shard = write_jsonl(tmp_path / "a.jsonl", [document(i, words=30) for i in range(5)] + ["tiny"])
    config = write_config(
        tmp_path,
        {
            "sources": [str(shard), {"name": "builtin:python-docs"}],
            "tokenizer": str(tokenizer_dir),
            "min_characters": 20,
            "min_tokens": 10,
            "seq_len": 64,
            "mode": "padding",
        },
    )
    assert main(["data", "inspect", str(config), "--json", "--max-documents", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    keys = {"documents", "dropped_min_characters", "dropped_min_tokens", "tokens", "sequences"}
    keys.add("padding_fraction")
    assert [s["source"] for s in report["sources"]] == [str(shard), "builtin:python-docs"]
    assert all(keys <= set(s) for s in [*report["sources"], report["total"]])
    first = report["sources"][0]
    assert first["documents"] == 5 and first["dropped_min_characters"] == 1
    assert report["total"]["documents"] == first["documents"] + report["sources"][1]["documents"]
    assert 0 < report["total"]["padding_fraction"] < 1
    assert main(["data", "inspect", str(config), "--max-documents", "3"]) == 0
    text = capsys.readouterr().out
    assert "| **total** |" in text and "sample 1 of" in text and "document 0 says" in text


def test_data_inspect_json_stays_json_while_a_bpe_tokenizer_is_trained(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing trained before
    shard = write_jsonl(tmp_path / "a.jsonl", [document(i, words=30) for i in range(20)])
    config = write_config(
        tmp_path, {"sources": [str(shard)], "tokenizer": "bpe", "bpe_vocab_size": 300,
                   "seq_len": 16, "min_tokens": 4, "min_characters": 10}
    )  # fmt: skip
    assert main(["data", "inspect", str(config), "--json", "--max-documents", "4"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total"]["documents"] == 4
    assert "training a 300-token BPE tokenizer" in captured.err


def test_data_inspect_errors_are_one_line(tmp_path, capsys):
    config = write_config(tmp_path, {"sources": [str(tmp_path / "none-*.jsonl")], "seq_len": 8})
    assert main(["data", "inspect", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("elmforge data: error: ") and "no file matches" in err
    assert len(err.splitlines()) == 1
    config = write_config(tmp_path, {"sequence_length": 8})
    assert main(["data", "inspect", str(config)]) == 2
    assert "data.sequence_length: unknown key" in capsys.readouterr().err


def test_tokenizer_train_writes_a_loadable_tokenizer(tmp_path):
    from elmforge.data.tokenizer import load_tokenizer

    shard = write_jsonl(tmp_path / "a.jsonl", [document(i) for i in range(30)])
    config = write_config(tmp_path, {"sources": [str(shard)]})
    out = tmp_path / "trained"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "elmforge.cli.main", "tokenizer", "train"]
    result = subprocess.run(
        [*command, "--data", str(config), "--vocab-size", "300", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    tokenizer = load_tokenizer(out)
    assert len(tokenizer) == 300
    ids = tokenizer("document 3 says river stone").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "document 3 says river stone"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--data",
                "builtin:python-docs",
                "--vocab-size",
                "280",
                "--out",
                str(tmp_path / "docs"),
                "--max-documents",
                "5",
            ]
        )
        == 0
    )
    assert len(load_tokenizer(tmp_path / "docs")) == 280
