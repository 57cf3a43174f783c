"""Experiment trackers beside metrics.jsonl (``log.report_to``): Weights & Biases and MLflow.

Each gets the resolved config once, every metrics line at its step, and the final model's path
at the end; both work offline: W&B in offline mode unless ``WANDB_MODE`` says otherwise (files
under the run's ``wandb/``, ``wandb sync`` uploads them later), MLflow into
``MLFLOW_TRACKING_URI`` or else a file store in the run's ``mlruns/`` (``mlflow ui
--backend-store-uri RUN/mlruns``). A resumed run continues the same tracker run (its id is kept
in the run directory). TensorBoard is :class:`elmforge.train.logging.RunLogger`'s own writer.
The packages are optional extras (``pip install 'elmforge[wandb]'``, ``'elmforge[mlflow]'``); a
tracker asked for without its package is a one-line error before training starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elmforge.errors import ConfigError
from elmforge.files import atomic_write_text

TRACKERS = {"wandb": "wandb", "mlflow": "mlflow"}  # name -> module
RUN_IDS = ".trackers.json"  # tracker name -> its run id, so a resumed run continues it


def check_trackers(names: list[str]) -> None:
    """Refuse a tracker whose package is not installed (before anything is trained)."""
    for name in names:
        module = TRACKERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"log.report_to: {name} is not installed (pip install 'elmforge[{name}]')"
            )


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Trackers:
    """The trackers of ``names`` (wandb, mlflow; others are ignored here) for one run."""

    def __init__(self, run_dir: Path, names: list[str], config: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.names = [n for n in names if n in TRACKERS]
        check_trackers(self.names)
        ids_path = self.run_dir / RUN_IDS
        ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.is_file() else {}
        self.wandb = self.mlflow_run = None
        if "wandb" in self.names:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            ids.setdefault("wandb", uuid.uuid4().hex[:12])
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "elmforge"), name=self.run_dir.name,
                id=ids["wandb"], resume="allow", dir=str(self.run_dir), config=dict(config),
            )  # fmt: skip
        if "mlflow" in self.names:
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                # MLflow 3 keeps the file store (offline, no server) behind an opt-in.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((self.run_dir / "mlruns").resolve().as_uri())
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "elmforge"))
            self.mlflow_run = mlflow.start_run(run_id=ids.get("mlflow"), run_name=self.run_dir.name)
            if "mlflow" not in ids:
                params = {k: str(v)[:500] for k, v in _flatten(config).items()}
                mlflow.log_params(params)
            ids["mlflow"] = self.mlflow_run.info.run_id
        if self.names:
            atomic_write_text(ids_path, json.dumps(ids, indent=1) + "\n")

    def log(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        numbers = {
            k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }  # fmt: skip
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        if self.mlflow_run is not None:
            import mlflow

            mlflow.log_metrics(numbers, step=step)

    def finish(self, final_model: Path | None) -> None:
        if self.wandb is not None:
            if final_model is not None:
                self.wandb.summary["final_model"] = str(final_model)
            self.wandb.finish()
        if self.mlflow_run is not None:
            import mlflow

            if final_model is not None:
                mlflow.set_tag("final_model", str(final_model))
            mlflow.end_run()
