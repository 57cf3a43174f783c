"""The schema of ``elmforge study lws``: a pretraining run config plus a ``study:`` section.

Everything but ``study:`` is the run config both arms train with (:class:`RunConfig`, so every
``--section.key`` flag of ``elmforge pretrain`` works here too); the ``model:`` section names the
layer-wise scaled arm, and the uniform arm is solved from it (:mod:`elmforge.model.uniform`).
Light on purpose (no torch): the CLI builds its flags from it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from elmforge.errors import ConfigError
from elmforge.package_data import config_path
from elmforge.train.config import RunConfig

# The default budget: two arms x three seeds on two CPU cores in well under an hour.
DEFAULT_LWS_CONFIG = config_path("study/lws-cpu.yaml")


@dataclass
class StudySection:
    seeds: int = 3
    """Runs per arm, seeded ``seed``, ``seed+1``, ...: each seed sets the initial weights and the
    data order, and both arms of a seed read the same batches in the same order."""
    jobs: int | Literal["auto"] = "auto"
    """Runs trained at once, each in its own process. ``auto``: one per CPU core when training on
    the CPU (each run on one thread), one per GPU on CUDA."""
    tolerance: float = 0.01
    """How far the uniform arm's parameter count may be from the LWS arm's (0.01: 1%)."""
    eval_documents: int = 200
    """Held-out documents, taken in turn from each source's validation split, scored for every
    run's final validation loss and perplexity (the same documents for every run)."""
    data_dir: str | None = None
    """A directory of benchmark files (as ``elmforge evaluate --data-dir``): also score every
    run's final model on ``tasks`` zero-shot."""
    tasks: list[str] | None = None
    """lm-eval tasks scored with ``data_dir`` (null: the paper's zero-shot suite)."""
    limit: int | None = None
    """Examples per task (null: every example of the local file)."""
    allow_split_fallback: bool = False
    """Where a task's evaluation split has no local file, use lm-eval's rule for a dataset
    without it (as ``elmforge evaluate --allow-split-fallback``; recorded in the scores)."""

    def validate(self, where: str = "study") -> None:
        for key, value in (("seeds", self.seeds), ("eval_documents", self.eval_documents)):
            if value < 1:
                raise ConfigError(f"{where}.{key}: must be at least 1, got {value}")
        if isinstance(self.jobs, int) and self.jobs < 1:
            raise ConfigError(f"{where}.jobs: must be at least 1 (or auto), got {self.jobs}")
        if not 0 < self.tolerance < 1:
            raise ConfigError(
                f"{where}.tolerance: must be between 0 and 1 (0.01 is 1%), got {self.tolerance}"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{where}.limit: must be at least 1, got {self.limit}")
        if self.tasks is not None and not self.tasks:
            raise ConfigError(f"{where}.tasks: empty; give task names or null for the suite")


@dataclass
class LwsStudyConfig(RunConfig):
    """A layer-wise scaling study: the run config of both arms, and how the study runs."""

    study: StudySection = field(default_factory=StudySection)
    """Seeds, parallel runs, matching tolerance and final evaluation."""

    def run_config(self) -> RunConfig:
        """The pretraining config the arms start from (everything but ``study:``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)}
        return RunConfig(**fields)

    @classmethod
    def load(cls, path: str | Path | None, overrides: typing.Sequence[str] = ()) -> LwsStudyConfig:
        """The study config at ``path`` (None: the default CPU budget) with overrides applied."""
        return cls.from_yaml(path if path is not None else DEFAULT_LWS_CONFIG, overrides)

    def study_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.study)
