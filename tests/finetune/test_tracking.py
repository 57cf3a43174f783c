"""--log.report_to: MLflow (a file store in the run directory) and Weights & Biases (offline)
get the resolved config, every metrics line and the final model's path; a tracker that is not
installed is a one-line error before anything trains."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from elmforge.errors import ConfigError
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.finetune.conftest import instruction_rows, write_json


def needs(module: str) -> pytest.MarkDecorator:
    """Skip unless the tracker's optional package is installed."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} not installed (pip install 'elmforge[{module}]')",
    )


QUICK = ["log.progress=none", "log.log_every=1", "train.num_threads=1", "train.micro_batch_size=4",
         "schedule.max_steps=3", "peft=lora", "lora.r=2", "optim.lr=3e-3"]  # fmt: skip


def _tuned(tmp_path: Path, model: Path, report_to: str) -> Path:
    """A 3-step LoRA SFT run reporting to ``report_to``; its final model."""
    data = write_json(tmp_path / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, [*QUICK, f"log.report_to={report_to}"])
    return finetune(FinetuneJob("sft", str(model), str(data)), config, tmp_path / "run")


@needs("mlflow")
def test_mlflow_file_store_gets_config_metrics_and_the_final_model(
    tmp_path: Path, base_model_dir: Path, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    final = _tuned(tmp_path, base_model_dir, "tensorboard,mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    run_id = json.loads((run / ".trackers.json").read_text())["mlflow"]
    tracked = client.get_run(run_id)
    assert tracked.data.params["optim.lr"] == "0.003" and tracked.data.params["peft"] == "lora"
    assert tracked.data.tags["final_model"] == str(final)
    losses = client.get_metric_history(run_id, "loss")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m.step, m.value) for m in losses] == [(r["step"], r["loss"]) for r in lines]


@needs("wandb")
def test_wandb_offline_run_is_written_in_the_run_directory(
    tmp_path: Path, base_model_dir: Path, monkeypatch
) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _tuned(tmp_path, base_model_dir, "wandb")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_a_tracker_that_is_not_installed_is_refused_before_training(
    tmp_path: Path, base_model_dir: Path, monkeypatch
) -> None:
    import elmforge.train.tracking as tracking

    monkeypatch.setitem(tracking.TRACKERS, "wandb", "no_such_module_for_wandb")
    with pytest.raises(ConfigError, match=r"log.report_to: wandb is not installed"):
        _tuned(tmp_path, base_model_dir, "wandb")
    assert not (tmp_path / "run").exists()
