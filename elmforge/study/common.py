"""What the single-run studies (``averaging``, ``tokens``) share: the run they read, the
held-out documents of its sources, their output directory and score cache."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmforge.errors import CheckpointError, ConfigError, ElmforgeError, OptionError
from elmforge.files import OUTPUT_MARKER, atomic_write_json, claim_output, output_verb
from elmforge.progress import Report, say
from elmforge.study.evaluation import (
    EvalSettings,
    EvaluationCache,
    check_zero_shot_request,
    heldout_texts,
    settings_for,
)

CACHE_FILE = "evaluations.json"


def claim_study_dir(out_dir: Path, verb: str, restart: bool = False) -> None:
    """Make ``out_dir`` this study's: an earlier output of the same study is resumed (or, with
    ``restart``, removed first); anything else follows :func:`elmforge.files.claim_output`."""
    if output_verb(out_dir) == verb:
        if not restart:
            return
        shutil.rmtree(out_dir)
    claim_output(out_dir, verb)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / OUTPUT_MARKER, {"verb": verb})


@dataclass(frozen=True)
class StudyOptions:
    """What a single-run study scores and where it writes (the CLI's flags)."""

    documents: int = 200
    """Held-out documents scored per model."""
    data_dir: str | None = None
    """Benchmark files: also score zero-shot tasks."""
    tasks: tuple[str, ...] | None = None
    """Tasks with ``data_dir`` (None: the zero-shot suite)."""
    limit: int | None = None
    """Examples per task (None: all)."""
    allow_split_fallback: bool = False
    """Where a task's evaluation split has no local file, use lm-eval's rule without it."""
    out_dir: str | Path | None = None
    """Report directory (None: ``RUN_DIR/study-NAME``)."""
    force: bool = False
    """Score every model again instead of using the cache."""
    command: str | None = None
    """The command line, recorded in the report."""


@dataclass
class RunStudy:
    """A run directory opened for a study, with the documents and cache its scores use."""

    run_dir: Path
    out_dir: Path
    config: Any  # RunConfig
    settings: EvalSettings
    cache: EvaluationCache
    verb: str = ""
    _texts: list[str] = field(default_factory=list)

    def claim(self, force: bool) -> None:
        """Take the output directory (after every check on the input has passed)."""
        claim_study_dir(self.out_dir, self.verb)
        if force:
            self.cache.entries.clear()

    @property
    def texts(self) -> list[str]:
        if not self._texts:
            try:
                sources = self.config.data.sources_for("validation")
            except ConfigError as err:
                raise ConfigError(f"{self.run_dir / 'config.yaml'}: {err}") from None
            self._texts = heldout_texts(sources, self.settings.documents)
        return self._texts


def open_run_study(run_dir: str | Path, name: str, options: StudyOptions) -> RunStudy:
    """Check the run and the request (cheap); :meth:`RunStudy.claim` then takes the output."""
    from elmforge.layout import RunDir, is_run_dir
    from elmforge.train.config import RunConfig

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ElmforgeError(f"{run_dir}: no such run directory")
    if not is_run_dir(run_dir):
        raise ElmforgeError(
            f"{run_dir}: not a run directory (no config.yaml with checkpoints/ or metrics.jsonl)"
        )
    if options.documents < 1:
        raise OptionError(
            "documents", f"{{option}} {options.documents}: must be at least 1", "--eval-documents"
        )
    if options.limit is not None and options.limit < 1:
        raise OptionError("limit", f"{{option}} {options.limit}: must be at least 1")
    config = RunConfig.from_yaml(RunDir(run_dir).config)
    settings = settings_for(
        config.seq_len, options.documents, options.data_dir, options.tasks, options.limit,
        options.allow_split_fallback,
    )  # fmt: skip
    check_zero_shot_request(settings)
    if not RunDir(run_dir).checkpoints.is_dir():
        raise CheckpointError(f"{run_dir}: no checkpoints/ to study")
    out = Path(options.out_dir) if options.out_dir is not None else run_dir / f"study-{name}"
    return RunStudy(
        run_dir, out, config, settings, EvaluationCache(out / CACHE_FILE), f"study {name}"
    )


def intact_checkpoints(run_dir: Path, report: Report = say) -> list[Path]:
    """The run's ``step-*`` checkpoints whose manifest checks out, oldest first."""
    from elmforge.layout import list_checkpoints
    from elmforge.train.checkpoint import verify_checkpoint

    good = []
    for path in list_checkpoints(run_dir):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            report(f"skipping {path.name}: {err}")
            continue
        good.append(path)
    return good


def trainer_tokens(checkpoint: Path) -> int | None:
    """Tokens the run had seen at a checkpoint (its trainer_state.json)."""
    import json

    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    tokens = state.get("tokens")
    return int(tokens) if isinstance(tokens, (int, float)) else None
