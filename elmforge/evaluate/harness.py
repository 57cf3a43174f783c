"""Evaluation runs: one validated :class:`EvalRequest`, one model load, lm-eval and perplexity.

``elmforge evaluate`` is :func:`load_and_evaluate`: check the request (names, numbers, data
files: cheap, before anything slow), load the model once through the one loader
(:func:`elmforge.infer.loading.load`), then :func:`evaluate_model`, which a trainer can also call
on an in-memory model. The lm-eval side lives in :mod:`elmforge.evaluate.lm_eval_glue`, the
suites in :mod:`elmforge.evaluate.suites`, the files in :mod:`elmforge.evaluate.report`.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError, OptionError
from elmforge.evaluate.suites import SUITES, plan_fewshot_runs


@dataclass
class EvalRequest:
    """What to evaluate and how; checked when built (:meth:`check_tasks` adds lm-eval's index)."""

    tasks: list[str] | None = None
    """lm-eval task or group names (or ``suite``)."""
    suite: str | None = None
    """One of :data:`~elmforge.evaluate.suites.SUITES`, with its per-task few-shot counts."""
    num_fewshot: int | None = None
    """Few-shot examples for every task (None: the suite's counts, else lm-eval's defaults)."""
    limit: int | None = None
    """Score only the first N documents of each task (and of the perplexity source)."""
    batch_size: int = 1
    data_dir: str | Path | None = None
    """Offline task data: ``DIR/<dataset>/<split>.jsonl`` (None: the Hugging Face hub)."""
    allow_split_fallback: bool = False
    """Where a split file is missing, use lm-eval's rule for a dataset without it (recorded)."""
    perplexity_data: str | dict | None = None
    """A data source to score perplexity and bits per byte on."""
    perplexity_split: str = "validation"
    context_length: int | None = None
    """Window length (None: the model's context)."""
    stride: int | None = None
    """Perplexity window stride (None: half a window)."""
    log_samples: bool = False
    """Also write lm-eval's per-document samples to ``out_dir/samples/<task>.jsonl``."""
    verbose: bool = False
    """Show lm-eval's own log messages."""
    out_dir: str | Path | None = None
    """Where ``results.json`` and ``results.md`` go (None: not written). An existing directory
    is refused unless an earlier evaluation wrote it and ``force`` is set
    (:func:`elmforge.files.claim_output`); written atomically."""
    force: bool = False
    """Replace an earlier evaluation's ``out_dir``."""
    runs: dict[int | None, list[str]] = field(init=False, repr=False)
    """Task names by the few-shot count they run with (derived)."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        self.runs = plan_fewshot_runs(self.tasks, self.suite, self.num_fewshot)
        if not self.runs and self.perplexity_data is None:
            raise ElmforgeError("nothing to evaluate: give a suite, tasks or perplexity data")
        if self.limit is not None and self.limit < 1:
            raise OptionError("limit", f"{{option}} {self.limit}: must be >= 1")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"{{option}} {self.batch_size}: must be >= 1")
        if self.data_dir is not None and self.runs and not Path(self.data_dir).is_dir():
            raise OptionError("data_dir", f"{{option}} {self.data_dir}: no such directory")
        if self.out_dir is not None:
            from elmforge.files import claim_output

            claim_output(self.out_dir, "evaluate", self.force)

    @property
    def task_names(self) -> list[str]:
        """The requested tasks: the suite's or the given list."""
        return list(SUITES[self.suite]) if self.suite is not None else list(self.tasks or [])

    def check_tasks(self) -> None:
        """Task names are in lm-eval's index and their local data files exist (no model needed)."""
        if self.runs:
            from elmforge.evaluate.lm_eval_glue import check_task_data

            check_task_data(self.runs, self.data_dir, self.allow_split_fallback)

    def settings(self) -> dict[str, Any]:
        """The request as ``results.json`` records it."""
        return {
            "suite": self.suite,
            "tasks": self.task_names,
            "num_fewshot": self.num_fewshot,
            "limit": self.limit,
            "batch_size": self.batch_size,
            "data_dir": str(self.data_dir) if self.data_dir is not None else None,
            "allow_split_fallback": self.allow_split_fallback,
        }


def evaluate_model(
    model: Any,
    tokenizer: Any,
    request: EvalRequest | None = None,
    *,
    model_name: str | None = None,
    tokenizer_name: str | None = None,
    **request_fields: Any,
) -> dict[str, Any]:
    """Score an in-memory ``model`` on lm-eval tasks (a suite or a list) and/or perplexity.

    Give an :class:`EvalRequest` or its fields as keywords. Returns the dict written to
    ``out_dir/results.json`` (with ``results.md`` beside it): ``results`` maps lm-eval task (and
    group) names to lm-eval's metrics plus ``n`` and ``num_fewshot``; ``perplexity`` holds tokens,
    loss, perplexity and bits per byte. The model runs where it is, in eval mode; its train/eval
    mode is restored afterwards, so a trainer can call this mid-training.
    """
    from elmforge.evaluate.lm_eval_glue import score_tasks
    from elmforge.evaluate.perplexity import perplexity_of_source
    from elmforge.evaluate.report import describe_model, describe_tokenizer, versions, write_results

    if request is None:
        request = EvalRequest(**request_fields)
    elif request_fields:
        raise TypeError("give an EvalRequest or its fields, not both")
    request.check_tasks()
    was_training = model.training
    model.eval()
    try:
        report: dict[str, Any] = {
            "model": describe_model(model, model_name),
            "tokenizer": describe_tokenizer(tokenizer, tokenizer_name),
            "versions": versions(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "settings": request.settings(),
            "results": {},
        }
        samples: dict[str, list] = {}
        if request.runs:
            scores = score_tasks(model, tokenizer, request)
            report["results"], report["task_versions"] = scores.results, scores.task_versions
            samples = scores.samples
        if request.perplexity_data is not None:
            report["perplexity"] = perplexity_of_source(
                model,
                tokenizer,
                request.perplexity_data,
                split=request.perplexity_split,
                context_length=request.context_length,
                stride=request.stride,
                batch_size=request.batch_size,
                max_documents=request.limit,
            )
    finally:
        model.train(was_training)
    if request.out_dir is not None:
        from elmforge.files import atomic_directory

        with atomic_directory(request.out_dir, verb="evaluate") as tmp:
            write_results(report, tmp, samples=samples if request.log_samples else None)
    return report


def model_label(loaded: Any) -> str:
    """A loaded model's name for reports, naming the adapter merged into it if there is one."""
    return loaded.name if loaded.adapter is None else f"{loaded.name} + adapter {loaded.adapter}"


def load_and_evaluate(
    path_or_name: str | os.PathLike,
    request: EvalRequest,
    *,
    tokenizer: Any = None,
    device: str = "auto",
    dtype: str | None = "auto",
    **load_options: Any,
) -> dict[str, Any]:
    """Load a model (anything :func:`elmforge.infer.loading.load` takes: a model directory, a
    training checkpoint, a hub name) once and run :func:`evaluate_model` on it; the request is
    checked first, so a typo or a missing data file costs no model load."""
    from elmforge.infer.loading import load

    request.check_tasks()
    loaded = load(path_or_name, tokenizer=tokenizer, device=device, dtype=dtype, **load_options)
    return evaluate_model(
        loaded.model,
        loaded.tokenizer,
        request,
        model_name=model_label(loaded),
        tokenizer_name=loaded.tokenizer_source,
    )
