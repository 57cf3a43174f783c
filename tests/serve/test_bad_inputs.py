"""Bad command lines of `elmforge serve`, `chat` and `generate`: exit 2 with one line naming the
option or file, no traceback (tests/cli_support.py)."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch

from tests.cli_support import assert_clean_error, run_elmforge
from tests.shapes import micro_config


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, model_dir):
    from elmforge import OpenELMForCausalLM

    root = tmp_path_factory.mktemp("bad-inputs")
    bare = root / "bare"  # a model without a tokenizer (and not LLaMA-2's vocabulary)
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    torch.manual_seed(0)
    other_vocab = root / "other-vocab"
    OpenELMForCausalLM(micro_config(vocab_size=300)).save_pretrained(other_vocab)
    not_adapter = root / "not-adapter"
    not_adapter.mkdir()
    return {"bare": bare, "other_vocab": other_vocab, "not_adapter": not_adapter}


@pytest.fixture()
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


LONG_PROMPT = "the cat " * 1200  # beyond the test model's 1024-token context

CASES = [
    ("serve", "{missing}", (), ["no such model directory"]),
    ("serve", "{model}", ("--max-batch", "0"), ["--max-batch 0", "at least 1"]),
    ("serve", "{model}", ("--port", "{busy_port}"), ["--port {busy_port}", "cannot listen"]),
    ("serve", "{model}", ("--draft-model", "{other_vocab}"), ["--draft-model", "vocabulary"]),
    ("serve", "{model}", ("--adapter", "{not_adapter}"), ["not a PEFT adapter directory"]),
    ("serve", "{bare}", (), ["has no tokenizer", "--tokenizer"]),
    ("chat", "{model}", ("--top-p", "2"), ["--top-p 2.0", "(0, 1]"]),
    ("generate", "{model}", ("--prompt", LONG_PROMPT), ["the prompt is", "context is 1024"]),
    ("serve", "{model}", ("--port", "70000"), ["--port 70000", "between 0 and 65535"]),
    ("serve", "{model}", ("--max-tokens-limit", "5000"), ["--max-tokens-limit 5000", "(1024"]),
    ("serve", "{model}", ("--draft-model", "{model}", "--prompt-lookup", "2"),
     ["--prompt-lookup and a draft model", "give one"]),
    ("serve", "./nowhere/model", (), ["nowhere/model", "no such model directory"]),
    ("chat", "{model}", ("--stop", ""), ["--stop", "must not be empty"]),
    ("chat", "{model}", ("--draft-model", "{model}", "--prompt-lookup", "2"), ["give one"]),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("verb", "model", "flags", "mentions"),
    CASES,
    ids=[f"{c[0]}-{c[3][0][:24]}" for c in CASES],
)
def test_bad_command_line_is_one_clean_line(verb, model, flags, mentions, dirs, model_dir,
                                            busy_port, tmp_path):  # fmt: skip
    names = {**dirs, "model": model_dir, "missing": tmp_path / "missing", "busy_port": busy_port}
    args = [verb, model.format(**names), *(flag.format(**names) for flag in flags)]
    if verb == "serve" and "--port" not in flags:
        args += ["--port", "0"]  # never depend on the default port being free
    proc = run_elmforge(*args, input="", timeout=300)
    assert_clean_error(proc, *(m.format(**names) for m in mentions))


@pytest.mark.slow
@pytest.mark.parametrize("piped", [bytes(range(256)), b"hello\n\xc3\x28 hi\n"])
def test_chat_refuses_standard_input_that_is_not_utf8(model_dir, piped):
    """Once a TypeError from the tokenizer (exit 1); now the line that is not UTF-8, named."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "elmforge.cli.main", "chat", str(model_dir),
               "--max-new-tokens", "2"]  # fmt: skip
    proc = subprocess.run(command, input=piped, capture_output=True, env=env, timeout=300)
    text = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )  # fmt: skip
    assert_clean_error(text, "standard input line 2", "not UTF-8")  # line 1 was answered
