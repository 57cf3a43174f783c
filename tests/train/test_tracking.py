"""--log.report_to mlflow for pretraining: the resolved config, the metrics lines (validation
included) and the final model's path reach an MLflow file store in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from elmforge.train import RunConfig, pretrain
from tests.finetune.test_tracking import needs
from tests.train.helpers import micro_run, read_metrics


@needs("mlflow")
def test_pretraining_reports_to_an_mlflow_file_store(
    bpe_tokenizer_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = micro_run(bpe_tokenizer_dir, schedule={"warmup_steps": 1, "max_steps": 4},
                    log={"report_to": ["mlflow"], "eval_every": 2})  # fmt: skip
    final = pretrain(RunConfig.from_dict(run), tmp_path / "run")
    assert not (tmp_path / "run" / "tb").exists()  # tensorboard was not asked for
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    run_id = json.loads((tmp_path / "run" / ".trackers.json").read_text())["mlflow"]
    tracked = client.get_run(run_id)
    assert tracked.data.tags["final_model"] == str(final)
    assert tracked.data.params["model.name"] == "OpenELM-tiny"
    val = client.get_metric_history(run_id, "val_loss")
    expected = [
        (r["step"], r["val_loss"]) for r in read_metrics(tmp_path / "run") if "val_loss" in r
    ]
    assert [(m.step, m.value) for m in val] == expected
