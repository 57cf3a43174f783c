"""`elmforge bench` refuses bad input with one line naming the option or file (exit 2), before
loading any model and without touching existing outputs."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from elmforge.cli.main import main
from tests.cli_support import assert_clean_error, run_elmforge, tree_snapshot


@pytest.fixture(scope="module")
def model_dir(micro_dir):
    return micro_dir


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """``main(args)`` with its output captured, shaped like a finished process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


# (arguments after the model, words the one error line must contain)
CASES = [
    (["--prompt", "0"], ["--prompt"]),
    (["--generate", "1"], ["--generate"]),
    (["--batch", "0,2"], ["--batch"]),
    (["--batch", "1,x"], ["--batch"]),
    (["--batch", "65"], ["--batch"]),
    (["--dtype", "int3"], ["--dtype", "int3"]),
    (["--paths", "jit"], ["--paths", "jit"]),
    (["--against", "vllm"], ["--against", "vllm"]),
    (["--repeats", "0"], ["--repeats"]),
    (["--threads", "0"], ["--threads"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--roofline-mib", "1"], ["--roofline-mib"]),
    (["--prompt", "100", "--generate", "64"], ["exceeds the model's context", "128"]),
    (["--batch", "1,,2"], ["--batch", "empty items"]),  # once silently skipped
    (["--batch", "1,"], ["--batch", "empty items"]),
    (["--dtype", "fp32,"], ["--dtype", "empty items"]),
]
if not torch.cuda.is_available():  # a CPU-only torch says it in the project's words
    CASES.append((["--device", "cuda"], ["--device cuda", "CUDA is not available"]))


@pytest.mark.parametrize(("extra", "mentions"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_options(model_dir, tmp_path, capsys, extra, mentions):
    out = tmp_path / "out"
    proc = in_process(capsys, "bench", model_dir, "--out", out, *extra)
    assert_clean_error(proc, *mentions)
    assert not out.exists()


def test_bad_models(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "openelm", "model_dim": -3}))
    for model, mentions in [
        (tmp_path / "missing", ["missing", "neither a model directory nor a preset"]),
        ("OpenELM-9T", ["OpenELM-9T", "OpenELM-270M"]),
        (empty, [str(empty), "no config.json"]),
        (broken, ["config.json"]),
        (other, ["config.json", "model_dim"]),
    ]:
        proc = in_process(capsys, "bench", model, "--out", tmp_path / "out")
        assert_clean_error(proc, *map(str, mentions))


def test_outputs_that_must_not_be_replaced(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    before = tree_snapshot(tmp_path)
    for out, mentions in [
        (run, ["run directory"]),
        (foreign, ["foreign", "not an elmforge output"]),
        (model_dir / "bench", ["inside the input"]),
    ]:
        proc = in_process(capsys, "bench", model_dir, "--out", out)
        assert_clean_error(proc, *map(str, mentions))
    assert tree_snapshot(tmp_path) == before


def test_a_real_process_fails_the_same_way(model_dir, tmp_path):
    proc = run_elmforge("bench", model_dir, "--dtype", "fp8", "--out", tmp_path / "out")
    assert_clean_error(proc, "--dtype", "fp8")


def test_model_resolves_like_every_verb(model_dir, tmp_path, capsys):
    # A run directory means its final/, a checkpoint step its model/ (elmforge.layout), and a run
    # without final/ is the same one-line CheckpointError as in generate or evaluate.
    import shutil

    from elmforge.bench.run import BenchConfig, _model_dir
    from elmforge.errors import CheckpointError

    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    shutil.copytree(model_dir, run / "checkpoints" / "step-00000010" / "model")
    proc = in_process(capsys, "bench", run, "--out", tmp_path / "out")
    assert_clean_error(proc, str(run), "no finished model (final/)", "step-00000010")
    step = run / "checkpoints" / "step-00000010"
    found, _ = _model_dir(BenchConfig(model=str(step), out=tmp_path / "o"), tmp_path, print)
    assert found == step / "model"
    shutil.copytree(model_dir, run / "final")
    found, source = _model_dir(BenchConfig(model=str(run), out=tmp_path / "o"), tmp_path, print)
    assert found == run / "final" and source == str(run / "final")
    with pytest.raises(CheckpointError, match="neither a model directory nor a preset"):
        _model_dir(BenchConfig(model="OpenELM-9T", out=tmp_path / "o"), tmp_path, print)
