"""Fixtures of the study tests: the training tests' 384-token BPE, a micro study config, and a
finished micro run with every checkpoint kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import bpe_tokenizer_dir  # noqa: F401  (the same session fixture)
from tests.train.helpers import micro_run


def micro_study(tokenizer_dir: Path, **study: Any) -> dict[str, Any]:
    """Two arms of the micro shape, 4 steps of 4 x 32 tokens per run, scored on 6 documents."""
    run = micro_run(
        tokenizer_dir,
        schedule={"warmup_steps": 1, "max_steps": 4},
        checkpoint={"save_every": 2, "keep_last": 2},
        log={"log_every": 1, "eval_every": 2, "eval_batches": 1, "tensorboard": False},
    )
    run["train"].pop("num_threads")  # the study gives each run its thread count
    run["study"] = {"seeds": 2, "eval_documents": 6, **study}
    return run


@pytest.fixture(scope="session")
def micro_run_dir(tmp_path_factory, bpe_tokenizer_dir) -> Path:  # noqa: F811
    """A finished 6-step micro run with checkpoints at steps 2, 4 and 6 (all kept)."""
    from elmforge.train.config import RunConfig
    from elmforge.train.loop import pretrain

    run_dir = tmp_path_factory.mktemp("study-run") / "run"
    config = RunConfig.from_dict(
        micro_run(
            bpe_tokenizer_dir,
            schedule={"warmup_steps": 1, "max_steps": 6},
            checkpoint={"save_every": 2, "keep_last": 0},
            log={"log_every": 1, "eval_every": 2, "eval_batches": 1, "tensorboard": False},
        )
    )
    pretrain(config, run_dir)
    return run_dir
