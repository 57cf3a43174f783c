"""Checkpoints: integrity checks, fallback to an intact one, exact in-process resumption,
retention, averaging."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import elmforge  # noqa: F401
from elmforge.cli.main import main
from elmforge.errors import CheckpointError
from elmforge.train import RunConfig, average_checkpoints, pretrain
from elmforge.train.checkpoint import (
    apply_retention,
    find_resume_checkpoint,
    latest_checkpoints,
    list_checkpoints,
    verify_checkpoint,
)
from tests.train.helpers import learning_curve, micro_run, safetensors_state


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run = micro_run(bpe_tokenizer_dir, log={"eval_batches": 0, "tensorboard": False, "plot": False},
                    checkpoint={"save_every": 2, "keep_last": 0})  # fmt: skip
    pretrain(RunConfig.from_dict(run), out)
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_every_checkpoint_verifies(run_dir: Path) -> None:
    names = [p.name for p in list_checkpoints(run_dir)]
    assert names == ["step-00000002", "step-00000004", "step-00000006", "step-00000008"]
    for path in list_checkpoints(run_dir):
        verify_checkpoint(path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no-manifest"])
def test_damaged_checkpoint_is_detected_and_skipped(
    run_dir: Path, tmp_path: Path, damage: str
) -> None:
    copy = _copy(run_dir, tmp_path)
    newest = copy / "checkpoints" / "step-00000008"
    target = newest / "optimizer.pt"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete":
        (newest / "model" / "model.safetensors").unlink()
    else:
        (newest / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="step-00000008"):
        verify_checkpoint(newest)
    messages: list[str] = []
    assert find_resume_checkpoint(copy, messages.append) == copy / "checkpoints" / "step-00000006"
    assert len(messages) == 1
    assert (
        "step-00000008 is unusable" in messages[0]
        and "falling back to step-00000006" in messages[0]
    )


def test_resume_after_a_corrupt_checkpoint_reproduces_the_run_exactly(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = _copy(run_dir, tmp_path)
    (copy / "checkpoints" / "step-00000008" / "rng.pt").write_bytes(b"garbage")
    shutil.rmtree(copy / "final")
    pretrain(RunConfig.from_yaml(copy / "config.yaml"), copy)
    printed = capsys.readouterr().out
    assert "falling back to step-00000006" in printed and "resumed from" in printed
    assert learning_curve(copy) == learning_curve(run_dir)
    expected = safetensors_state(run_dir / "final")
    for key, value in safetensors_state(copy / "final").items():
        assert torch.equal(value, expected[key]), key


def test_resuming_with_another_model_shape_is_refused(run_dir: Path, tmp_path: Path) -> None:
    copy = _copy(run_dir, tmp_path)
    shutil.rmtree(copy / "final")
    config = RunConfig.from_yaml(copy / "config.yaml", ["model.shape.num_transformer_layers=3"])
    with pytest.raises(CheckpointError, match="does not fit this model"):
        pretrain(config, copy)


def test_retention_keeps_the_newest(run_dir: Path, tmp_path: Path) -> None:
    copy = _copy(run_dir, tmp_path)
    apply_retention(copy, 2)
    assert [p.name for p in list_checkpoints(copy)] == ["step-00000006", "step-00000008"]
    apply_retention(copy, 0)
    assert len(list_checkpoints(copy)) == 2


def test_average_is_the_elementwise_mean(run_dir: Path, tmp_path: Path) -> None:
    paths = [run_dir / "checkpoints" / "step-00000006", run_dir / "checkpoints" / "step-00000008"]
    out = average_checkpoints(paths, tmp_path / "avg")
    first, second = (safetensors_state(p / "model") for p in paths)
    averaged = safetensors_state(out)
    for key, value in averaged.items():
        expected = ((first[key].double() + second[key].double()) / 2).to(value.dtype)
        assert torch.equal(value, expected), key
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "OpenELMForCausalLM"
    assert (out / "tokenizer.json").is_file()


def test_average_cli_over_the_last_checkpoints(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert latest_checkpoints(run_dir, 3)[0].parent.name == "step-00000004"
    code = main(["average", "--last", "3", str(run_dir), "--out", str(tmp_path / "avg")])
    assert code == 0
    assert "averaged 3 checkpoints" in capsys.readouterr().out
    assert (tmp_path / "avg" / "model.safetensors").is_file()
    code = main(["average", "--last", "50", str(run_dir), "--out", str(tmp_path / "y")])
    assert code == 2 and "50 asked for" in capsys.readouterr().err
    code = main(["average", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nothing" in err and len(err.strip().splitlines()) == 1


def test_stale_temporaries_of_a_run_are_pretrains_only(tmp_path: Path) -> None:
    import subprocess
    import sys

    from elmforge.train.checkpoint import clean_stale_temporaries

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, live = child.pid, os.getppid()
    run = tmp_path / "run"
    (run / "checkpoints" / f".step-00000004.tmp-{dead}-x").mkdir(parents=True)
    (run / f".config.yaml.tmp-{dead}-x.yaml").write_text("half")
    (run / f".averaged.tmp-{dead}-x").mkdir()  # `average --out RUN/averaged`: not pretrain's
    (run / f".loss.png.tmp-{live}-x.png").write_text("being written by a live process")
    (run / f".final.old-{dead}-x" / "final").mkdir(parents=True)  # killed between renames
    clean_stale_temporaries(run)
    assert sorted(p.name for p in run.iterdir()) == [
        f".averaged.tmp-{dead}-x",
        f".loss.png.tmp-{live}-x.png",
        "checkpoints",
        "final",
    ]
    assert list((run / "checkpoints").iterdir()) == []
