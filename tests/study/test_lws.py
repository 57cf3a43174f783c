"""A tiny layer-wise scaling study end to end: real runs in parallel processes, resumed."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from elmforge.errors import ConfigError
from elmforge.study.config import LwsStudyConfig
from elmforge.study.lws import run_lws_study
from elmforge.study.report import model_config
from tests.cli_support import tree_snapshot
from tests.study.conftest import micro_study

RUN_FIELDS = {"seed", "run_dir", "val_loss", "val_ppl", "tokens"}
ARM_FIELDS = {"parameters", "config", "runs", "val_loss_mean", "val_loss_ci95"}
DIFFERENCE_FIELDS = {"difference", "ci95", "t", "df", "p_value", "se"}


def _config(tokenizer_dir, **study):
    return LwsStudyConfig.from_dict(micro_study(tokenizer_dir, **study))


def _first_batches(run_config, tokenizer, count=3):
    from elmforge.data.loader import build_train_loader

    loader = build_train_loader(run_config.data, tokenizer, run_config.train.micro_batch_size)
    return [next(loader)["input_ids"].tolist() for _ in range(count)]


@pytest.mark.slow
def test_tiny_study_end_to_end_then_resumed(tmp_path, bpe_tokenizer_dir, capsys):
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.train.config import RunConfig

    out = tmp_path / "study"
    report = run_lws_study(_config(bpe_tokenizer_dir), out)

    # -- the report has every field, on disk as returned ------------------------------------------
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["seeds"] == 2
    for arm in ("lws", "uniform"):
        entry = report["arms"][arm]
        assert ARM_FIELDS <= set(entry)
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
        for run in entry["runs"]:
            assert RUN_FIELDS <= set(run)
            assert run["tokens"] == 4 * 4 * 32  # steps x micro-batch x seq_len
            assert run["val_ppl"] == pytest.approx(2.718281828 ** run["val_loss"], rel=1e-6)
        low, high = entry["val_loss_ci95"]
        assert low < entry["val_loss_mean"] < high
    for key in ("lws_minus_uniform", "paired_by_seed"):
        assert DIFFERENCE_FIELDS <= set(report["difference"][key])
    assert report["difference"]["lws_minus_uniform"]["difference"] == pytest.approx(
        report["arms"]["lws"]["val_loss_mean"] - report["arms"]["uniform"]["val_loss_mean"]
    )
    assert report["conclusion"] and report["paired_conclusion"] and report["notes"] == []
    for name in ("report.md", "loss_curves.png", "val_loss.png", "profile.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lws |" in (out / "report.md").read_text()
    assert report["paired_conclusion"] in (out / "report.md").read_text()

    # -- parameters matched, the uniform arm uniform --------------------------------------------
    lws, uniform = (report["arms"][arm] for arm in ("lws", "uniform"))
    assert abs(uniform["parameters"] / lws["parameters"] - 1) <= 0.01
    for entry in (lws, uniform):
        assert model_config(entry).num_parameters_total() == entry["parameters"]
    assert len(set(model_config(uniform).ffn_dims())) == 1
    assert len(set(model_config(lws).ffn_dims())) > 1

    # -- the arms share data, tokens and schedule: their resolved configs differ only in shape ----
    for seed in (0, 1):
        configs = [yaml.safe_load((out / "runs" / f"{arm}-seed{seed}" / "config.yaml").read_text())
                   for arm in ("lws", "uniform")]  # fmt: skip
        shapes = [c["model"].pop("shape") for c in configs]
        assert configs[0] == configs[1]
        assert set(shapes[0]) ^ set(shapes[1]) <= {
            "qkv_multipliers",
            "ffn_multipliers",
            "ffn_dim_divisor",
        }
        assert configs[0]["seed"] == configs[0]["data"]["seed"] == seed
        assert configs[0]["data"]["tokenizer"] == str(bpe_tokenizer_dir.resolve())
        run_configs = [RunConfig.from_dict({**c, "model": {**c["model"], "shape": s}})
                       for c, s in zip(configs, shapes)]  # fmt: skip
        tokenizer = load_tokenizer(bpe_tokenizer_dir)
        assert _first_batches(run_configs[0], tokenizer) == _first_batches(
            run_configs[1], tokenizer
        )

    # -- re-running resumes: nothing is trained or scored again ------------------------------------
    runs_before = tree_snapshot(out / "runs")
    capsys.readouterr()
    again = run_lws_study(_config(bpe_tokenizer_dir), out)
    printed = capsys.readouterr().out
    assert "4 run(s) already finished" in printed and "started" not in printed
    assert "scoring" not in printed
    assert tree_snapshot(out / "runs") == runs_before
    assert again["arms"] == report["arms"]

    # -- an interrupted run (no final model yet) is the only one trained again -------------------
    shutil.rmtree(out / "runs" / "uniform-seed1" / "final")
    (out / "evaluations" / "uniform-seed1.json").unlink()
    run_lws_study(_config(bpe_tokenizer_dir), out)
    printed = capsys.readouterr().out
    assert "started uniform-seed1" in printed and printed.count("started") == 1

    # -- a planned run must keep its config ------------------------------------------------------
    changed = micro_study(bpe_tokenizer_dir)
    changed["optim"]["lr"] = 1e-3
    with pytest.raises(ConfigError, match=r"study\.json.*optim\.lr: 0\.003 -> 0\.001.*--force"):
        run_lws_study(LwsStudyConfig.from_dict(changed), out)

    # -- one seed: the report is still written, without an interval, and says why ----------------
    one = run_lws_study(_config(bpe_tokenizer_dir, seeds=1), out)
    stderr = capsys.readouterr().err
    assert "one seed per arm" in stderr
    assert one["seeds"] == 1 and one["arms"]["lws"]["val_loss_ci95"] is None
    assert one["difference"]["lws_minus_uniform"]["ci95"] is None
    assert "no interval" in json.loads((out / "report.json").read_text())["notes"][0]
