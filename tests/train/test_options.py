"""Training options: bf16 autocast, activation checkpointing, torch.compile, progress display,
MFU accounting, stale temporaries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elmforge import OpenELMConfig
from elmforge.model.modeling import OpenELMFeedForwardNetwork
from elmforge.train import RunConfig, pretrain
from elmforge.train.checkpoint import clean_stale_temporaries
from elmforge.train.logging import format_plain, use_progress_bar
from elmforge.train.mfu import flops_per_token
from tests.train.helpers import learning_curve, micro_run

QUIET = {"eval_batches": 0, "tensorboard": False, "plot": False}


def _run(tokenizer_dir: Path, out: Path, **sections: dict) -> list[dict]:
    run = micro_run(tokenizer_dir, schedule={"warmup_steps": 1, "max_steps": 3},
                    checkpoint={"save_every": 3}, log=QUIET, **sections)  # fmt: skip
    pretrain(RunConfig.from_dict(run), out)
    return learning_curve(out)


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (a one-element list, so the caller sees updates)."""
    original, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_activation_checkpointing_recomputes_and_gives_the_same_losses(
    bpe_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted inside the layer: the layer's own forward is what the checkpoint wrapper replays.
    calls = _count_calls(monkeypatch, OpenELMFeedForwardNetwork, "forward")
    plain = _run(bpe_tokenizer_dir, tmp_path / "plain")
    plain_calls, calls[0] = calls[0], 0
    recomputed = _run(bpe_tokenizer_dir, tmp_path / "ac", model={"activation_checkpointing": True})
    assert calls[0] == 2 * plain_calls > 0  # every layer runs again in the backward pass
    assert [r["loss"] for r in recomputed] == pytest.approx([r["loss"] for r in plain], rel=1e-6)


def test_bf16_autocast_trains_close_to_fp32(bpe_tokenizer_dir: Path, tmp_path: Path) -> None:
    fp32 = [r["loss"] for r in _run(bpe_tokenizer_dir, tmp_path / "fp32")]
    bf16 = [
        r["loss"] for r in _run(bpe_tokenizer_dir, tmp_path / "bf16", train={"precision": "bf16"})
    ]
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    assert bf16 != fp32  # bf16 matmuls round differently: the option took effect


@pytest.mark.slow
def test_torch_compile_gives_the_same_losses(
    bpe_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _run(bpe_tokenizer_dir, tmp_path / "eager")
    compiles = _count_calls(monkeypatch, torch, "compile")
    compiled = _run(bpe_tokenizer_dir, tmp_path / "compiled", model={"compile": True})
    assert compiles[0] == 1
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-4)


def test_progress_is_plain_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert use_progress_bar("auto") is False
    assert use_progress_bar("bar") is True and use_progress_bar("plain") is False
    line = format_plain({"step": 3, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 1234.0})
    assert line == "step 3 | loss 2.5000 | lr 1.000e-03 | tokens_per_s 1,234"


def test_flops_per_token_is_6n_plus_attention() -> None:
    config = OpenELMConfig.from_name("OpenELM-270M")
    attention = 12 * 2048 * 64 * sum(config.num_query_heads)
    assert flops_per_token(config, 2048) == 6 * 271_527_168 + attention


def test_half_written_checkpoints_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / ".step-00000009.tmp-abc" / "model").mkdir(parents=True)
    (root / "step-00000008").mkdir()
    clean_stale_temporaries(tmp_path)
    assert [p.name for p in root.iterdir()] == ["step-00000008"]
