"""Fixtures for tests/serve: a tiny model directory (tokenizer trained on the evaluation test
tasks' words, so lm-eval can score it too) and one real server shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_model_dir
from tests.evaluate.eval_helpers import corpus_strings, train_tokenizer, write_task_dir
from tests.serve.server_support import running_server

# Long enough that a request can outlive the client that sent it (the disconnect tests).
CONTEXT = 1024


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    return write_task_dir(tmp_path_factory.mktemp("serve-tasks"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, task_dir) -> Path:
    tokenizer = train_tokenizer(corpus_strings(task_dir))
    return write_model_dir(tmp_path_factory.mktemp("serve-model"), tokenizer,
                           vocab_size=len(tokenizer), max_context_length=CONTEXT)  # fmt: skip


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from elmforge.data.tokenizer import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    with running_server(model_dir, log_dir=tmp_path_factory.mktemp("serve-logs")) as running:
        yield running
