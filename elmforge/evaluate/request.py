"""What an evaluation is asked to do: one :class:`EvalRequest` carries every setting and checks
its numbers, names and directories when built (no model, no lm-eval import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError, OptionError
from elmforge.evaluate.suites import SUITES, plan_fewshot_runs


def require_something_to_evaluate(
    suite: str | None, tasks: list[str] | str | None, perplexity_data: str | dict | None
) -> None:
    """The one check that a request asks for anything (the ``llm-adapters`` suite included,
    which never builds an :class:`EvalRequest`)."""
    if not (suite or tasks or perplexity_data):
        raise ElmforgeError("nothing to evaluate: give a suite, tasks or perplexity data "
                            "(--suite, --tasks, --perplexity)")  # fmt: skip


@dataclass
class EvalRequest:
    """What to evaluate and how; checked when built
    (:func:`elmforge.evaluate.harness.check_tasks` adds lm-eval's index and the data files)."""

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
        require_something_to_evaluate(self.suite, self.tasks, self.perplexity_data)
        self.runs = plan_fewshot_runs(self.tasks, self.suite, self.num_fewshot)
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
