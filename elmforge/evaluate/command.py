"""``elmforge evaluate`` as one library call: compare earlier results, or score one model.

The verb's choices live here, not in the CLI: ``--compare`` files, the ``llm-adapters`` suite
(LLM-Adapters' CommonSense test sets, :mod:`elmforge.evaluate.llm_adapters`) or lm-eval suites,
tasks and perplexity (:func:`elmforge.evaluate.harness.load_and_evaluate`), and where the
results go when no ``out`` is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError
from elmforge.evaluate.request import EvalRequest, require_something_to_evaluate
from elmforge.evaluate.suites import SUITES

LLM_ADAPTERS = "llm-adapters"
SUITE_CHOICES = (*SUITES, LLM_ADAPTERS)


def default_out_dir(model: str | os.PathLike) -> Path:
    """``runs/evaluate/<model name>``: where results go without ``--out``."""
    return Path("runs/evaluate") / Path(model).name


def evaluate_command(
    model: str | None,
    *,
    compare: list[str] | None = None,
    suite: str | None = None,
    tasks: list[str] | None = None,
    perplexity_data: str | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    load_options: dict[str, Any] | None = None,
    **request_fields: Any,
) -> Path | None:
    """Run what ``elmforge evaluate`` was asked; returns the results directory (None for
    ``compare``, which prints its table and writes ``compare.md`` / ``.png``)."""
    if compare:
        from elmforge.evaluate.report import compare_results

        if model:
            raise ElmforgeError("--compare takes results files only, not a MODEL")
        compare_results(compare, out, force=force)
        return None
    if not model:
        raise ElmforgeError("give a MODEL directory or hub name (or --compare A B)")
    require_something_to_evaluate(suite, tasks, perplexity_data)
    out_dir = _claim_out_dir(model, out, force, load_options or {})
    if suite == LLM_ADAPTERS:
        return _llm_adapters(model, out_dir, force, load_options or {}, **request_fields)
    from elmforge.evaluate.harness import load_and_evaluate

    request = EvalRequest(
        tasks=tasks,
        suite=suite,
        perplexity_data=perplexity_data,
        out_dir=out_dir,
        force=force,
        **request_fields,
    )
    load_and_evaluate(model, request, **(load_options or {}))
    return out_dir


def _claim_out_dir(
    model: str, out: str | os.PathLike | None, force: bool, load_options: dict[str, Any]
) -> Path:
    """Where the results go, checked before the model loads: never the model, its adapter or a
    run directory, and an earlier evaluation's output only with ``force``."""
    from elmforge.files import claim_output

    target = Path(out) if out else default_out_dir(model)
    sources = (model, load_options.get("adapter"))
    inputs = tuple(p for p in sources if p and Path(p).exists())
    return claim_output(target, "evaluate", force, inputs=inputs)


def _llm_adapters(
    model: str,
    out_dir: Path,
    force: bool,
    load_options: dict[str, Any],
    *,
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    **ignored: Any,
) -> Path:
    """``--suite llm-adapters``: LLM-Adapters' test sets on the loaded model (+ adapter)."""
    from elmforge.evaluate.harness import model_label
    from elmforge.evaluate.llm_adapters import available_tasks, evaluate_llm_adapters
    from elmforge.modeldir.loading import load

    if not data_dir:
        raise ElmforgeError(
            "--suite llm-adapters needs --data-dir DIR holding <task>/test.json (LLM-Adapters' "
            "layout; ../shared/data/commonsense in a checkout)"
        )
    task_names = available_tasks(data_dir)  # before the slow model load
    loaded = load(model, **load_options)
    evaluate_llm_adapters(loaded.model, loaded.tokenizer, data_dir, tasks=task_names,
                          limit=limit, batch_size=batch_size, out_dir=out_dir, force=force,
                          model_name=model_label(loaded),
                          tokenizer_name=loaded.tokenizer_source)  # fmt: skip
    return out_dir
