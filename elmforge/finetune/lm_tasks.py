"""lm-eval tasks while fine-tuning (``eval.tasks``): the evaluation harness scores the model in
memory at every ``eval.every`` evaluation, beside the held-aside rows' ``val_*`` metrics.

- **Checked first.** Task names (in lm-eval's index), their data files under ``eval.data_dir`` and
  an ``eval.keep_best`` task metric are checked before the model loads, each error a line naming
  the key.
- **Every process scores.** The harness hands lm-eval the model as one process (rank 0 of 1), so
  under ``torchrun`` every rank runs the same requests in the same order and batches: FSDP2's
  all-gathers in each forward pass meet on every rank. lm-eval returns the figures on
  ``LOCAL_RANK`` 0 only; rank 0's are broadcast, so every rank decides ``eval.keep_best`` alike
  (saving is collective), and rank 0's logger writes them.
- **No trace on the run.** lm-eval seeds Python's, NumPy's and torch's global generators; they are
  saved and put back around each scoring, so the dropout masks after an evaluation are those of a
  run without ``eval.tasks`` (a killed run still resumes to the bit).
"""

from __future__ import annotations

from typing import Any

from elmforge.errors import ConfigError, ElmforgeError, OptionError
from elmforge.evaluate.harness import check_tasks, evaluate_model
from elmforge.evaluate.lm_eval_glue import default_task_manager
from elmforge.evaluate.request import EvalRequest
from elmforge.finetune.config import EVAL_METRICS, EvalSection, task_of_metric
from elmforge.train import distributed as dist_utils
from elmforge.train.checkpoint import capture_rng_state, restore_rng_state
from elmforge.train.engine import autocast

# lm-eval's per-result fields that are no metric.
NOT_METRICS = {"n", "num_fewshot"}


def task_request(section: EvalSection, batch_size: int) -> EvalRequest | None:
    """The harness's request for ``eval.tasks``, checked (names, data files), or None without
    tasks; every problem is a one-line error naming the ``eval.*`` key."""
    if not section.tasks:
        return None
    try:
        request = EvalRequest(tasks=list(section.tasks), limit=section.limit,
                              data_dir=section.data_dir, batch_size=batch_size)  # fmt: skip
        check_tasks(request)
    except OptionError as err:  # the harness's parameter (data_dir) is eval's key here
        raise ConfigError(err.template.replace("{option}", f"eval.{err.option}")) from None
    except ElmforgeError as err:
        raise ConfigError(f"eval.tasks: {err}") from None
    return request


def keep_best_rule(section: EvalSection) -> tuple[str, str] | None:
    """(metric, ``min`` or ``max``) of ``eval.keep_best``: for a task metric, the direction its
    lm-eval config declares (else lm-eval's registry of metrics); an unknown metric is refused
    naming the task's metrics."""
    name = section.keep_best
    if name is None:
        return None
    if name in EVAL_METRICS:
        return name, EVAL_METRICS[name]
    found = task_of_metric(name, section)
    if found is None:  # the config's validation refused it already; a config built by hand
        raise ConfigError(f"eval.keep_best: {name!r} names no task of eval.tasks")
    task, metric = found
    from lm_eval.api.registry import is_higher_better

    config = default_task_manager().task_index[task].cfg or {}
    declared = config.get("metric_list") or config.get("aggregate_metric_list") or []
    metrics = {entry["metric"]: entry.get("higher_is_better") for entry in declared
               if isinstance(entry, dict) and isinstance(entry.get("metric"), str)}  # fmt: skip
    base = metric.split("[", 1)[0]  # a filtered metric, e.g. exact_match[strict-match]
    if base not in metrics:
        raise ConfigError(
            f"eval.keep_best: {name!r}: task {task} reports {', '.join(sorted(metrics)) or 'none'}"
        )
    higher = metrics[base]
    if higher is None:
        higher = is_higher_better(base)
    return name, "min" if higher is False else "max"  # unknown to lm-eval: a score, higher


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The harness's results as ``val_<task>_<metric>``: the requested tasks and groups (a
    group's subtasks stay in the harness's own reports), without standard errors."""
    inside = {sub for entry in results.values() for sub in entry.get("subtasks", ())}
    flat = {}
    for task, entry in results.items():
        if task in inside:
            continue
        for metric, value in entry.items():
            if metric in NOT_METRICS or metric.endswith("_stderr"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"val_{task}_{metric}"] = float(value)
    return flat


class TaskScorer:
    """Scores ``eval.tasks`` on a model in memory (called by the task's ``evaluate`` on every
    process, in eval mode, under ``no_grad``)."""

    def __init__(
        self, request: EvalRequest, tokenizer: Any, precision: str, env: dist_utils.DistEnv
    ) -> None:
        self.request, self.tokenizer, self.precision, self.env = request, tokenizer, precision, env

    def __call__(self, model: Any) -> dict[str, float]:
        rng = capture_rng_state()
        try:
            with autocast(self.precision, self.env.device):  # the precision training computes in
                report = evaluate_model(model, self.tokenizer, self.request)
        finally:
            restore_rng_state(rng)
        return dist_utils.broadcast_object(task_metrics(report["results"]), self.env)
