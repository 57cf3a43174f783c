"""Resuming a run with a changed config: what is applied, what is refused, what --force-resume
does; falling back past a checkpoint whose optimizer state is unsafe; runs whose checkpoints are
all unusable; output permissions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

from elmforge.errors import CheckpointError, ConfigError
from elmforge.train import RunConfig, pretrain
from elmforge.train.checkpoint import list_checkpoints
from elmforge.train.resume_rules import check_resume_config, config_changes
from tests.train.helpers import micro_run, read_metrics


def _run(tokenizer_dir: Path, **sections) -> dict:
    quiet = {"eval_batches": 0, "tensorboard": False, "plot": False, "progress": "none"}
    return micro_run(
        tokenizer_dir,
        schedule={"warmup_steps": 1, "max_steps": 4},
        checkpoint={"save_every": 1, "keep_last": 0},
        log=quiet,
        **sections,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    config = _run(bpe_tokenizer_dir)
    config["schedule"]["max_steps"] = 2  # stopped at step 2 of what the tests resume to 4
    pretrain(RunConfig.from_dict(config), out)
    shutil.rmtree(out / "final")
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_a_changed_learning_rate_and_longer_schedule_are_applied_and_said(
    run_dir: Path, tmp_path: Path, bpe_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = _copy(run_dir, tmp_path)
    config = RunConfig.from_dict(_run(bpe_tokenizer_dir, optim={"lr": 1e-3}))
    pretrain(config, copy)
    out = capsys.readouterr().out
    assert "applied from the resumed step: optim.lr 0.003 -> 0.001, schedule.max_steps 2 -> 4" in (
        out
    )
    steps = [r for r in read_metrics(copy) if "lr" in r and r["step"] > 2]
    assert [r["step"] for r in steps] == [3, 4]
    # The new schedule at the resumed step: cosine from 1e-3 at step 1 to 1e-4 at step 4.
    assert steps[0]["lr"] == pytest.approx(config.optim.lr * (0.1 + 0.9 * 0.5 * (1 + 0.5)))


@pytest.mark.parametrize(
    ("override", "keys"),
    [
        ({"data": {"seq_len": 16}}, ["data.seq_len 32 -> 16"]),
        ({"train": {"micro_batch_size": 2, "num_workers": 1}}, ["train.micro_batch_size 4 -> 2",
                                                                 "train.num_workers 0 -> 1"]),
        ({"data": {"sources": [{"name": "builtin:python-stdlib"}]}}, ["data.sources"]),
    ],
)  # fmt: skip
def test_a_change_that_breaks_exact_resumption_is_refused_naming_the_keys(
    run_dir: Path, tmp_path: Path, bpe_tokenizer_dir: Path, override: dict, keys: list[str]
) -> None:
    copy = _copy(run_dir, tmp_path)
    before = sorted(p.name for p in copy.rglob("*"))
    with pytest.raises(ConfigError, match="--force-resume") as caught:
        pretrain(RunConfig.from_dict(_run(bpe_tokenizer_dir, **override)), copy)
    for key in keys:
        assert key in str(caught.value)
    assert sorted(p.name for p in copy.rglob("*")) == before


def test_force_resume_continues_with_a_fresh_data_stream(
    run_dir: Path, tmp_path: Path, bpe_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = _copy(run_dir, tmp_path)
    config = RunConfig.from_dict(_run(bpe_tokenizer_dir, data={"seq_len": 16}))
    pretrain(config, copy, force_resume=True)
    out = capsys.readouterr().out
    assert "data.seq_len 32 -> 16 (--force-resume): exact resumption is off" in out
    assert "resumed from checkpoints/step-00000002" in out
    assert (copy / "final" / "model.safetensors").is_file()


def test_a_checkpoint_with_an_unsafe_optimizer_state_falls_back_to_the_previous(
    run_dir: Path, tmp_path: Path, bpe_tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = _copy(run_dir, tmp_path)
    newest = list_checkpoints(copy)[-1]

    class Unsafe:  # weights_only refuses to build it (unpickling would call print)
        def __reduce__(self):
            return (print, ("UNSAFE CODE RAN",))

    torch.save({"state": Unsafe()}, newest / "optimizer.pt")
    # The manifest agrees (the file was replaced by someone, not damaged in transit).
    manifest = json.loads((newest / "manifest.json").read_text())
    data = (newest / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (newest / "manifest.json").write_text(json.dumps(manifest))
    pretrain(RunConfig.from_dict(_run(bpe_tokenizer_dir)), copy)
    out = capsys.readouterr().out
    assert "UNSAFE CODE RAN" not in out
    assert "optimizer.pt: refused as unsafe" in out and "falling back to step-00000001" in out
    assert "resumed from checkpoints/step-00000001" in out


def test_a_run_whose_checkpoints_are_all_unusable_stops_and_keeps_everything(
    run_dir: Path, tmp_path: Path, bpe_tokenizer_dir: Path
) -> None:
    copy = _copy(run_dir, tmp_path)
    for checkpoint in list_checkpoints(copy):
        (checkpoint / "rng.pt").write_bytes(b"damaged")
    metrics = (copy / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="none of the run's 2 checkpoint"):
        pretrain(RunConfig.from_dict(_run(bpe_tokenizer_dir)), copy)
    assert (copy / "metrics.jsonl").read_bytes() == metrics
    assert len(list_checkpoints(copy)) == 2


def test_config_changes_compare_section_keys() -> None:
    saved = {"optim": {"lr": 1.0}, "model": {"shape": {}}, "seed": 0, "old": {"gone": 1}}
    current = {"optim": {"lr": 2.0}, "model": {"shape": {"a": 1}}, "seed": 0, "new": {"x": 1}}
    assert config_changes(saved, current) == {
        "optim.lr": (1.0, 2.0),
        "model.shape": ({}, {"a": 1}),
    }


@pytest.mark.parametrize(
    ("sharding", "saved", "current", "worlds", "kept"),
    [
        # Two processes of 2 resumed by one of 4 read the same global batch from one stream.
        ("global_batch", {"micro_batch_size": 2}, {"micro_batch_size": 4}, (2, 1), True),
        ("global_batch", {"micro_batch_size": 2}, {"micro_batch_size": 2, "grad_accum": 2},
         (2, 1), True),
        ("global_batch", {"micro_batch_size": 2}, {"micro_batch_size": 3}, (1, 1), False),
        # A stream per process: the process's share must stay.
        ("by_rank", {"micro_batch_size": 2}, {"micro_batch_size": 4}, (2, 1), False),
        ("by_rank", {"micro_batch_size": 4}, {"micro_batch_size": 2, "grad_accum": 2},
         (1, 1), True),
        # global_batch_tokens decides grad_accum: 128 tokens of seq_len 32 are 4 sequences.
        ("global_batch", {"micro_batch_size": 4}, {"micro_batch_size": 2,
         "global_batch_tokens": 128}, (1, 1), True),
    ],
)  # fmt: skip
def test_a_batch_change_is_judged_by_the_sequences_per_step(
    tmp_path: Path, sharding: str, saved: dict, current: dict, worlds: tuple, kept: bool
) -> None:
    def config(train: dict) -> dict:
        return {"data": {"seq_len": 32}, "train": {"data_sharding": sharding, **train}}

    saved_path = tmp_path / "config.yaml"
    saved_path.write_text(yaml.safe_dump(config(saved)))
    if kept:
        assert check_resume_config(saved_path, config(current), worlds=worlds) == {}
    else:
        with pytest.raises(ConfigError, match="train.micro_batch_size .*--force-resume"):
            check_resume_config(saved_path, config(current), worlds=worlds)


def test_run_outputs_follow_the_umask(tmp_path: Path, bpe_tokenizer_dir: Path) -> None:
    config = _run(bpe_tokenizer_dir)
    config["schedule"]["max_steps"] = 2
    old = os.umask(0o002)
    try:
        pretrain(RunConfig.from_dict(config), tmp_path / "run")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "run").rglob("*")
    }
    wrong = {k: oct(m) for k, m in modes.items() if m not in (0o664, 0o775)}
    assert wrong == {}
    assert "run/checkpoints/step-00000002/model/model.safetensors" in modes
