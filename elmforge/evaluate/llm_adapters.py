"""The ``llm-adapters`` suite: LLM-Adapters' CommonSense test sets, scored as Apple scored OpenELM.

CoreNet's ``corenet-eval-llmadapters`` in its multiple-choice mode (Apple's choice for small
models, ``projects/openelm/README-peft.md``), reproduced here:

- data: ``DIR/<task>/test.json`` for the eight tasks (LLM-Adapters' layout; a copy of seven is in
  ``../shared/data/commonsense``), each shuffled with ``random.seed(83652)`` before ``--limit``
  (so a limited run scores the same rows as CoreNet's);
- candidates: from the instruction's last line, ``Answer format: true/false`` or ``...
  answer1/.../answerN`` (also ``ending``, ``option``, ``solution``);
- context: LLM-Adapters' training prompt with an empty response (``llm_adapters_prompt``, the
  bytes CoreNet's ``generate_prompt_and_response`` produces, input always empty);
- continuation: ``the correct answer is <candidate>``, scored by lm-eval's ``HFLM`` (bos added) —
  the project's lm-eval glue (``harness.build_lm``) around the in-memory model;
- ``acc``: the candidate with the highest log-likelihood; ``acc_norm``: log-likelihood divided by
  the continuation's length in characters, as CoreNet divides.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from elmforge.data.prompts import llm_adapters_prompt
from elmforge.errors import DataError, ElmforgeError
from elmforge.files import atomic_directory, claim_output

SUITE = "llm-adapters"
TASKS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)
SHUFFLE_SEED = 83652
_CANDIDATE_WORDS = ("answer", "ending", "option", "solution")


def answer_options(instruction: str) -> list[str]:
    """The candidate answers the instruction's last line names (CoreNet's rule)."""
    last = instruction.split("\n")[-1]
    if re.match(r".*Answer format: true/false", last):
        return ["true", "false"]
    for word in _CANDIDATE_WORDS:
        if re.match(rf".*Answer format: .*{word}(\d)$", last):
            return [f"{word}{n}" for n in range(1, int(last[-1]) + 1)]
    return []


def continuation(option: str) -> str:
    return f"the correct answer is {option}"


def load_task(data_dir: Path, task: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A task's test rows in CoreNet's order (shuffled with its seed), the first ``limit``."""
    path = data_dir / task / "test.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON array of rows")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not {"instruction", "answer"} <= set(row):
            raise DataError(f"{path} row {number}: expected instruction and answer fields")
        if row["answer"] not in answer_options(row["instruction"]):
            raise DataError(
                f"{path} row {number}: answer {row['answer']!r} is not among the candidates of "
                "its 'Answer format:' line"
            )
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows[:limit] if limit else rows


def available_tasks(data_dir: str | Path) -> list[str]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ElmforgeError(f"--data-dir {data_dir}: no such directory")
    tasks = [t for t in TASKS if (data_dir / t / "test.json").is_file()]
    if not tasks:
        raise ElmforgeError(
            f"--data-dir {data_dir}: no LLM-Adapters test files (expected <task>/test.json for "
            f"tasks among {', '.join(TASKS)})"
        )
    return tasks


def score_tasks(
    lm: Any,
    data_dir: str | Path,
    tasks: list[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{task: {acc, acc_norm, n}}`` plus an ``average`` entry, through lm-eval's ``lm``."""
    from lm_eval.api.instance import Instance

    from elmforge.evaluate.lm_eval_glue import quiet_lm_eval

    data_dir = Path(data_dir)
    tasks = tasks or available_tasks(data_dir)
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        rows = load_task(data_dir, task, limit)
        requests, spans = [], []
        for doc_id, row in enumerate(rows):
            context = llm_adapters_prompt(row["instruction"])
            options = answer_options(row["instruction"])
            spans.append((len(requests), options))
            requests += [
                Instance("loglikelihood", row, (context, continuation(o)), i, (task, doc_id, 1))
                for i, o in enumerate(options)
            ]
        with quiet_lm_eval(verbose=False):  # no warning per prompt cut to the model's context
            answers = lm.loglikelihood(requests, disable_tqdm=not progress)
        scores = [logll for logll, _ in answers]
        correct = correct_norm = 0
        for row, (start, options) in zip(rows, spans):
            logll = scores[start : start + len(options)]
            normed = [s / len(continuation(o)) for s, o in zip(logll, options)]
            correct += options[logll.index(max(logll))] == row["answer"]
            correct_norm += options[normed.index(max(normed))] == row["answer"]
        results[task] = {"acc": correct / len(rows), "acc_norm": correct_norm / len(rows),
                         "n": len(rows), "num_fewshot": 0}  # fmt: skip
    results["average"] = {
        metric: sum(results[t][metric] for t in tasks) / len(tasks)
        for metric in ("acc", "acc_norm")
    }
    results["average"]["n"] = sum(results[t]["n"] for t in tasks)
    return results


def evaluate_llm_adapters(
    model: Any,
    tokenizer: Any,
    data_dir: str | Path,
    *,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    out_dir: str | Path | None = None,
    force: bool = False,
    model_name: str | None = None,
    tokenizer_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on the suite; returns (and with ``out_dir`` writes) an evaluate report.
    ``out_dir`` is claimed as every evaluation's (:func:`elmforge.files.claim_output`): never a
    run directory, an earlier evaluation's output only with ``force``; written atomically."""
    import datetime as dt

    from elmforge.environment import versions
    from elmforge.evaluate.lm_eval_glue import build_lm
    from elmforge.evaluate.report import describe_model, describe_tokenizer, write_results

    if limit is not None and limit < 1:
        raise ElmforgeError(f"--limit {limit}: must be >= 1")
    if out_dir is not None:
        claim_output(out_dir, "evaluate", force)
    tasks = tasks or available_tasks(data_dir)
    was_training = model.training
    model.eval()
    try:
        lm = build_lm(model, tokenizer, batch_size)
        results = score_tasks(lm, data_dir, tasks, limit, progress)
    finally:
        model.train(was_training)
    report = {
        "model": describe_model(model, model_name),
        "tokenizer": describe_tokenizer(tokenizer, tokenizer_name),
        "versions": versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "suite": SUITE,
            "tasks": [*tasks, "average"],
            "limit": limit,
            "batch_size": batch_size,
            "data_dir": str(data_dir),
        },
        "results": results,
    }
    if out_dir is not None:
        with atomic_directory(out_dir, verb="evaluate") as tmp:
            write_results(report, tmp)
    return report
