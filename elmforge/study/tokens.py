"""``elmforge study tokens RUN_DIR``: the paper's Figure 1 claim (longer training raises
accuracy) on any run: validation loss and zero-shot accuracy of every saved checkpoint against
the tokens it had seen, beside the run's own in-run validation curve.

The change from the first to the last checkpoint is stated with its uncertainty: the loss
difference paired over the same held-out documents, and the accuracy difference with the
per-task standard errors lm-eval reports (treated as independent, so the interval is
conservative).
"""

from __future__ import annotations

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
    zero_shot_table,
)
from elmforge.study.evaluation import evaluate_model_dir, public


def _in_run_curve(run_dir: Path) -> list[tuple[int, float]]:
    from elmforge.train.logging import read_metrics

    return [
        (int(r["tokens"]), float(r["val_loss"]))
        for r in read_metrics(run_dir)
        if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("tokens"), (int, float))
    ]


def run_tokens_study(
    run_dir: str | Path,
    options: StudyOptions | None = None,
    report: Report = say,
) -> dict[str, Any]:
    """Score every intact checkpoint of the run; write the report, table and plot."""
    from elmforge.errors import CheckpointError
    from elmforge.layout import checkpoint_step
    from elmforge.study.plots import plot_tokens

    options = options or StudyOptions()
    study = open_run_study(run_dir, "tokens", options)
    checkpoints = intact_checkpoints(study.run_dir, report)
    if not checkpoints:
        raise CheckpointError(f"{study.run_dir}: no intact checkpoint under checkpoints/")
    study.claim(options.force)
    entries, scores = [], []
    for path in checkpoints:
        result = evaluate_model_dir(
            path / "model", study.texts, study.settings, study.cache, report, path.name
        )
        scores.append(result)
        entries.append({"kind": "checkpoint", "label": path.name, "step": checkpoint_step(path),
                        "tokens": trainer_tokens(path), **public(result)})  # fmt: skip
    in_run = _in_run_curve(study.run_dir)
    result: dict[str, Any] = {
        "study": "tokens",
        "run_dir": str(study.run_dir),
        "checkpoints": entries,
        "in_run_validation": [{"tokens": t, "val_loss": v} for t, v in in_run],
        "evaluation": {k: v for k, v in vars(study.settings).items()},
        "plots": {"tokens": "tokens.png"},
        "notes": [],
    }
    if len(entries) < 2:
        result["notes"].append(
            "one checkpoint: nothing to compare (set checkpoint.keep_last 0 to keep them all)"
        )
        result["conclusion"] = "One checkpoint only: no change over tokens can be measured."
    else:
        loss = paired_loss_difference(scores[-1], scores[0])
        result["loss_last_minus_first"] = loss
        result["accuracy_last_minus_first"] = accuracy_difference(scores[-1], scores[0])
        result["conclusion"] = _conclusion(entries, loss, result["accuracy_last_minus_first"])
    if options.command:
        result["command"] = options.command
    title = f"{study.run_dir.name}: held-out loss and zero-shot accuracy against tokens seen"
    plot_tokens(entries, in_run, title, study.out_dir / "tokens.png")
    atomic_write_json(study.out_dir / "report.json", result)
    atomic_write_text(study.out_dir / "report.md", render_tokens_markdown(result))
    report(result["conclusion"])
    report(f"report: {study.out_dir / 'report.md'}")
    return result


def _conclusion(
    entries: list[dict[str, Any]], loss: dict[str, Any], accuracy: dict[str, Any] | None
) -> str:
    first, last = entries[0], entries[-1]
    span = f"from {first['tokens'] or 0:,} to {last['tokens'] or 0:,} tokens"
    ci = loss["ci95"]
    loss_text = f"validation loss changed by {loss['difference']:+.4f} nats {span}"
    if ci:
        loss_text += f" (95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] over {loss['documents']} documents)"
    sentences = [loss_text[0].upper() + loss_text[1:] + "."]
    if accuracy is not None:
        sentences.append(accuracy_sentence(accuracy, "last minus first checkpoint"))
    return " ".join(sentences)


def render_tokens_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Validation loss and accuracy against tokens: {result['run_dir']}", ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    lines += [f"**{result['conclusion']}**", ""]
    lines += [f"- note: {note}" for note in result["notes"]] + ([""] if result["notes"] else [])
    lines += model_table(result["checkpoints"], "checkpoint")
    lines += zero_shot_table(result["checkpoints"], "checkpoint")
    lines += ["", "![tokens](tokens.png)", ""]
    return "\n".join(lines)
