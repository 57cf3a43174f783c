"""`elmforge generate`: a real model dir with its own tokenizer, streamed, deterministic greedy."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elmforge import OpenELMForCausalLM
from elmforge.cli.main import main
from elmforge.data.tokenizer import train_bpe_tokenizer
from elmforge.infer.generate import SamplingOptions, generate_text
from elmforge.modeldir.loading import load
from tests.conftest import write_model_dir
from tests.shapes import micro_config

CORPUS = [f"def function_{i}(x):\n    return x + {i}\n" for i in range(300)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=320, out_dir=directory)
    return write_model_dir(directory, vocab_size=len(tokenizer))


def test_generate_text_greedy_matches_manual_argmax(model_dir):
    loaded = load(model_dir, device="cpu", dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    pieces: list[str] = []
    options = SamplingOptions(max_new_tokens=12, greedy=True, ignore_eos=True)
    result = generate_text(model, tokenizer, "def function_", options, on_text=pieces.append)
    text = result.text
    assert (result.finish_reason, result.completion_tokens) == ("length", 12)
    assert "".join(pieces) == text
    ids = tokenizer("def function_", return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(12):
            next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    prompt_len = len(tokenizer("def function_").input_ids)
    assert text == tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True)


@pytest.mark.slow
def test_generate_cli_subprocess_streams_and_is_seeded(model_dir):
    command = [sys.executable, "-m", "elmforge.cli.main", "generate", str(model_dir)]
    command += ["--prompt", "def function_", "--max-new-tokens", "8", "--seed", "3"]
    env = {**os.environ, "CI": "true"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("def function_")
    assert first.stdout == second.stdout


def test_generate_cli_errors(model_dir, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "nope" in capsys.readouterr().err
    bare = tmp_path / "bare"
    OpenELMForCausalLM(micro_config()).save_pretrained(bare)
    capsys.readouterr()
    assert main(["generate", str(bare), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no tokenizer" in err and "--tokenizer" in err and len(err.splitlines()) == 1
    assert main(["generate", str(model_dir), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


def test_prompt_from_file_and_stdin_equals_prompt_flag(model_dir, tmp_path, capsys, monkeypatch):
    prompt = "def function_1(x):\n    return"
    args = ["generate", str(model_dir), "--greedy", "--max-new-tokens", "6", "--device", "cpu"]
    assert main([*args, "--prompt", prompt]) == 0
    expected = capsys.readouterr().out
    assert expected.startswith(prompt)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompt, encoding="utf-8")
    assert main([*args, "--prompt-file", str(prompt_file)]) == 0
    assert capsys.readouterr().out == expected
    for stdin_args in (["--prompt-file", "-"], []):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(prompt.encode())))
        assert main([*args, *stdin_args]) == 0
        assert capsys.readouterr().out == expected


def test_prompt_input_errors(model_dir, tmp_path, capsys, monkeypatch):
    args = ["generate", str(model_dir), "--device", "cpu"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    cases = [
        ([*args, "--prompt-file", str(bad)], ["--prompt-file", str(bad), "not UTF-8"]),
        ([*args, "--prompt-file", str(tmp_path / "none.txt")], ["none.txt", "cannot read"]),
    ]
    for argv, mentions in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert all(m in err for m in mentions), err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    assert main(args) == 2
    assert "--prompt TEXT, --prompt-file FILE" in capsys.readouterr().err
    # An empty prompt from a file or a non-terminal standard input (/dev/null) is refused.
    (tmp_path / "empty.txt").write_text("")
    for argv, stdin_bytes, where in (([*args, "--prompt-file", str(tmp_path / "empty.txt")], b"",
                                      "empty.txt"),
                                     (args, b"", "standard input")):  # fmt: skip
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin_bytes)))
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and where in err and "the prompt is empty" in err, err
