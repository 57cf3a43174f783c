"""Evaluation runs: one validated :class:`EvalRequest`, one model load, lm-eval and perplexity.

``elmforge evaluate`` is :func:`load_and_evaluate`: check the request (names, numbers, data
files: cheap, before anything slow), load the model once through the one loader
(:func:`elmforge.modeldir.loading.load`), then :func:`evaluate_model`, which a trainer can also call
on an in-memory model. The lm-eval side lives in :mod:`elmforge.evaluate.lm_eval_glue`, the
suites in :mod:`elmforge.evaluate.suites`, the files in :mod:`elmforge.evaluate.report`.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from elmforge.evaluate.request import EvalRequest


def check_tasks(request: EvalRequest) -> None:
    """Task names are in lm-eval's index and their local data files exist (no model needed)."""
    if request.runs:
        from elmforge.evaluate.lm_eval_glue import check_task_data

        check_task_data(request.runs, request.data_dir, request.allow_split_fallback)


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
    from elmforge.environment import versions
    from elmforge.evaluate.lm_eval_glue import score_tasks
    from elmforge.evaluate.perplexity import perplexity_of_source
    from elmforge.evaluate.report import describe_model, describe_tokenizer, write_results

    if request is None:
        request = EvalRequest(**request_fields)
    elif request_fields:
        raise TypeError("give an EvalRequest or its fields, not both")
    check_tasks(request)
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
    """Load a model (anything :func:`elmforge.modeldir.loading.load` takes: a model directory, a
    training checkpoint, a hub name) once and run :func:`evaluate_model` on it; the request is
    checked first, so a typo or a missing data file costs no model load."""
    from elmforge.modeldir.loading import load

    check_tasks(request)
    loaded = load(path_or_name, tokenizer=tokenizer, device=device, dtype=dtype, **load_options)
    return evaluate_model(
        loaded.model,
        loaded.tokenizer,
        request,
        model_name=model_label(loaded),
        tokenizer_name=loaded.tokenizer_source,
    )
