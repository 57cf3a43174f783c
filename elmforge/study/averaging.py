"""``elmforge study averaging RUN_DIR [--last 5]``: the paper's Table 2 claim on any run.

The released OpenELM models average the last five checkpoints, which "matches or beats" the
final one. This scores each of the run's last K checkpoints, their average
(:func:`elmforge.train.checkpoint.average_checkpoints`) and the final model on the same
held-out documents (and zero-shot tasks with ``--data-dir``), and states the difference average
minus final with a 95% interval over the documents (paired: the same documents for both).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from elmforge.files import atomic_write_json, atomic_write_text
from elmforge.progress import Report, say
from elmforge.study.common import (
    StudyOptions,
    intact_checkpoints,
    open_run_study,
    trainer_tokens,
)
from elmforge.study.compare import (
    accuracy_difference,
    accuracy_sentence,
    model_table,
    paired_loss_difference,
    verdict,
    zero_shot_table,
)
from elmforge.study.evaluation import evaluate_model_dir, public, weights_sha256


def _entry(kind: str, label: str, step: int | None, tokens: int | None, scores: dict) -> dict:
    return {"kind": kind, "label": label, "step": step, "tokens": tokens, **public(scores)}


def run_averaging_study(
    run_dir: str | Path,
    last: int = 5,
    options: StudyOptions | None = None,
    report: Report = say,
) -> dict[str, Any]:
    """Score the last ``last`` checkpoints, their average and the final model; write the report."""
    from elmforge.errors import CheckpointError, OptionError
    from elmforge.layout import WEIGHTS, RunDir, checkpoint_step
    from elmforge.study.plots import plot_averaging
    from elmforge.train.checkpoint import average_checkpoints

    if last < 2:
        raise OptionError("last", f"{{option}} {last}: averaging needs at least 2 checkpoints")
    options = options or StudyOptions()
    study = open_run_study(run_dir, "averaging", options)
    checkpoints = intact_checkpoints(study.run_dir, report)[-last:]
    if len(checkpoints) < last:
        raise CheckpointError(
            f"{study.run_dir}: {len(checkpoints)} intact checkpoint(s) under checkpoints/, "
            f"{{option}} {last} asked for (set checkpoint.keep_last to at least {last} when "
            "training)",
            option="last",
        )
    study.claim(options.force)
    texts, settings, cache = study.texts, study.settings, study.cache
    scores: dict[str, dict[str, Any]] = {}
    entries = []
    for path in checkpoints:
        scores[path.name] = evaluate_model_dir(
            path / "model", texts, settings, cache, report, path.name
        )
        entries.append(_entry("checkpoint", path.name, checkpoint_step(path), trainer_tokens(path),
                              scores[path.name]))  # fmt: skip

    shas = [weights_sha256(path / "model") for path in checkpoints]
    average_key = hashlib.sha256(("average:" + ",".join(shas)).encode()).hexdigest()

    def score_average() -> dict[str, Any]:
        from elmforge.study.evaluation import evaluate_loaded, load_for_scoring

        report(f"averaging {', '.join(p.name for p in checkpoints)} and scoring the average")
        with tempfile.TemporaryDirectory(prefix=".averaged-", dir=study.out_dir) as tmp:
            averaged = average_checkpoints(checkpoints, Path(tmp) / "model")
            model, tokenizer = load_for_scoring(averaged)
            return evaluate_loaded(model, tokenizer, texts, settings, report)

    scores["average"] = cache.get_or_score(average_key, settings, score_average)
    entries.append(
        _entry("average", f"average of {last}", None, entries[-1]["tokens"], scores["average"])
    )

    final_dir = RunDir(study.run_dir).final
    final_label = "final"
    if (final_dir / WEIGHTS).is_file():
        final_sha = weights_sha256(final_dir)
        same = next((p.name for p, sha in zip(checkpoints, shas) if sha == final_sha), None)
        final_label = f"final (= {same})" if same else "final"
        scores["final"] = evaluate_model_dir(final_dir, texts, settings, cache, report, "final")
    else:
        report(f"{final_dir}: no final model (an unfinished run); the newest checkpoint stands in")
        scores["final"] = scores[checkpoints[-1].name]
        final_label = f"final (newest: {checkpoints[-1].name})"
    entries.append(_entry("final", final_label, None, entries[-2]["tokens"], scores["final"]))

    versus_final = paired_loss_difference(scores["average"], scores["final"])
    best = min(checkpoints, key=lambda p: scores[p.name]["val_loss"])
    versus_best = paired_loss_difference(scores["average"], scores[best.name])
    result: dict[str, Any] = {
        "study": "averaging",
        "run_dir": str(study.run_dir),
        "last": last,
        "models": entries,
        "average_minus_final": versus_final,
        "average_minus_best_checkpoint": {**versus_best, "checkpoint": best.name},
        "conclusion": verdict(
            versus_final, f"average of the last {last} checkpoints", "final model"
        ),
        "evaluation": _settings_dict(settings),
        "plots": {"averaging": "averaging.png"},
    }
    accuracy = accuracy_difference(scores["average"], scores["final"])
    if accuracy is not None:
        result["zero_shot_average_minus_final"] = accuracy
    if options.command:
        result["command"] = options.command
    title = f"{study.run_dir.name}: {result['conclusion']}"
    plot_averaging(entries, _wrap(title), study.out_dir / "averaging.png")
    atomic_write_json(study.out_dir / "report.json", result)
    atomic_write_text(study.out_dir / "report.md", render_averaging_markdown(result))
    report(result["conclusion"])
    report(f"report: {study.out_dir / 'report.md'}")
    return result


def _settings_dict(settings: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(settings)


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def render_averaging_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Checkpoint averaging: {result['run_dir']}", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    lines += [f"**{result['conclusion']}**", ""]
    best = result["average_minus_best_checkpoint"]
    lines += [
        verdict(
            best,
            f"average of the last {result['last']}",
            f"best single checkpoint ({best['checkpoint']})",
        ),
        "",
    ]
    accuracy = result.get("zero_shot_average_minus_final")
    if accuracy is not None:
        lines += [accuracy_sentence(accuracy, "average minus final"), ""]
    lines += model_table(result["models"], "model")
    lines += zero_shot_table(result["models"], "model")
    evaluation = result["evaluation"]
    lines += [
        "",
        f"Held-out documents of the run's sources (validation split), windows of "
        f"{evaluation['context_length']} tokens advancing by {evaluation['stride']}; intervals "
        "are t intervals of the per-token loss over documents (the same documents for every "
        "model, so differences are paired).",
        "",
        "![averaging](averaging.png)",
        "",
    ]
    return "\n".join(lines)
