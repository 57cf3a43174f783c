"""`elmforge evaluate`: results files, perplexity, --compare, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elmforge.cli.main import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.slow
def test_evaluate_perplexity_and_compare(capsys, model_dir, task_dir, tmp_path):
    text_file = tmp_path / "doc.txt"
    text_file.write_text("the cat sat on the warm stone by the river. " * 20)
    runs = []
    for batch_size in (1, 2):
        out = tmp_path / f"run{batch_size}"
        rc, stdout, _ = run_cli(
            capsys,
            model_dir,
            "--tasks", "arc_easy,winogrande",
            "--data-dir", task_dir,
            "--limit", 4,
            "--batch-size", batch_size,
            "--perplexity", text_file,
            "--split", "train",
            "--context-length", 32,
            "--out", out,
        )  # fmt: skip
        assert rc == 0
        assert "| arc_easy | 4 | 0 | acc_norm |" in stdout
        report = json.loads((out / "results.json").read_text())
        assert set(report["results"]) == {"arc_easy", "winogrande"}
        assert report["perplexity"]["tokens"] > 0
        assert report["perplexity"]["context_length"] == 32
        assert "## Perplexity" in (out / "results.md").read_text()
        runs.append(out / "results.json")

    rc, stdout, _ = run_cli(capsys, "--compare", *runs, "--out", tmp_path / "cmp")
    assert rc == 0
    assert "| arc_easy | acc_norm |" in stdout
    assert (tmp_path / "cmp" / "compare.md").is_file()
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def _no_tokenizer_dir(model_dir: Path, tmp_path: Path) -> Path:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    return bare


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_task", ["unknown lm-eval task 'arc_eazy'", "arc_easy"]),
        ("missing_file", ["task piqa", "piqa/validation.jsonl"]),
        ("missing_test_split", ["task arc_challenge", "arc_challenge/test.jsonl"]),
        ("no_tokenizer", ["has no tokenizer", "--tokenizer"]),
        ("no_model_dir", ["no such model directory"]),
        ("bad_compare", ["not an elmforge results.json"]),
        ("suite_unknown_dir", ["--data-dir", "no such directory"]),
        ("nothing", ["nothing to evaluate"]),
        ("batch_size", ["--batch-size 0"]),
    ],
)
def test_bad_input_is_a_one_line_error(capsys, model_dir, task_dir, tmp_path, case, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_results = tmp_path / "bad.json"
    bad_results.write_text('{"hello": 1}')
    args = {
        "unknown_task": [model_dir, "--tasks", "arc_easy,arc_eazy"],
        "missing_file": [model_dir, "--tasks", "piqa", "--data-dir", empty],
        "missing_test_split": [model_dir, "--tasks", "arc_challenge", "--data-dir", task_dir],
        "no_tokenizer": [_no_tokenizer_dir(model_dir, tmp_path), "--tasks", "piqa"],
        "no_model_dir": [tmp_path / "nowhere", "--tasks", "piqa"],
        "bad_compare": ["--compare", bad_results, bad_results],
        "suite_unknown_dir": [model_dir, "--suite", "zero-shot", "--data-dir", tmp_path / "x"],
        "nothing": [model_dir],
        "batch_size": [model_dir, "--tasks", "piqa", "--batch-size", "0"],
    }[case]
    rc, _, stderr = run_cli(capsys, *args)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("elmforge evaluate: error: ")
    for fragment in expected:
        assert fragment in lines[0]


@pytest.mark.slow
def test_console_script_error_has_no_traceback(model_dir):
    script = Path(sys.executable).parent / "elmforge"
    proc = subprocess.run(
        [str(script), "evaluate", str(model_dir), "--tasks", "hellaswag_x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "elmforge evaluate: error: unknown lm-eval task 'hellaswag_x'"
        + proc.stderr.strip().split("'hellaswag_x'", 1)[1]
    ]
    assert "Traceback" not in proc.stderr
