"""Comparisons of a single run's models on the same held-out documents and tasks, and their
Markdown: what ``study averaging`` and ``study tokens`` share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from elmforge.study.stats import ratio_summary, t_quantile


def paired_loss_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Loss of ``a`` minus loss of ``b`` on the same documents, with its 95% interval."""
    numerators = [x - y for x, y in zip(a["document_nll"], b["document_nll"])]
    summary = ratio_summary(numerators, a["document_tokens"])
    return {
        "difference": summary.mean,
        "ci95": list(summary.ci95) if summary.ci95 else None,
        "documents": summary.n,
    }


def accuracy_difference(
    a_scores: dict[str, Any], b_scores: dict[str, Any]
) -> dict[str, Any] | None:
    """Mean zero-shot accuracy of ``a`` minus ``b`` over their common tasks; a normal 95%
    interval from lm-eval's per-task standard errors, taken as independent between the two
    models (conservative: the same questions make the real difference less noisy)."""
    a, b = a_scores.get("zero_shot"), b_scores.get("zero_shot")
    if not a or not b:
        return None
    tasks = sorted(set(a["tasks"]) & set(b["tasks"]))
    if not tasks:
        return None
    difference = sum(a["tasks"][t]["value"] - b["tasks"][t]["value"] for t in tasks) / len(tasks)
    errors = [a["tasks"][t].get("stderr") for t in tasks] + [
        b["tasks"][t].get("stderr") for t in tasks
    ]
    ci = None
    if all(isinstance(e, (int, float)) for e in errors):
        se = math.sqrt(sum(e * e for e in errors)) / len(tasks)
        half = t_quantile(math.inf) * se
        ci = [difference - half, difference + half]
    return {"difference": difference, "ci95": ci, "tasks": tasks}


def accuracy_sentence(accuracy: dict[str, Any], label: str) -> str:
    """One sentence on a mean zero-shot accuracy difference and whether its interval excludes 0."""
    text = f"Mean zero-shot accuracy, {label}: {100 * accuracy['difference']:+.2f} points"
    if accuracy["ci95"]:
        low, high = (100 * v for v in accuracy["ci95"])
        resolved = "resolved" if low > 0 or high < 0 else "not resolved: the interval includes 0"
        text += (
            f" (95% CI [{low:+.2f}, {high:+.2f}] over {len(accuracy['tasks'])} tasks, {resolved})"
        )
    return text + "."


def verdict(difference: dict[str, Any], subject: str, reference: str) -> str:
    """One sentence: which model is lower, and whether the interval excludes 0."""
    d, ci = difference["difference"], difference["ci95"]
    interval = (
        f"{d:+.4f} nats (95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] over {difference['documents']} documents)"
        if ci
        else f"{d:+.4f} nats"
    )
    if ci and ci[1] < 0:
        return f"The {subject} has a lower validation loss than the {reference}: {interval}."
    if ci and ci[0] > 0:
        return f"The {subject} has a higher validation loss than the {reference}: {interval}."
    return f"The {subject} and the {reference} cannot be told apart: {interval}."


def model_table(entries: Sequence[dict[str, Any]], first_column: str) -> list[str]:
    """Markdown rows: each model's loss (95% CI over documents), perplexity, bits per byte and
    mean zero-shot accuracy (when scored)."""
    with_accuracy = any(e.get("zero_shot") for e in entries)
    header = f"| {first_column} | tokens | val loss | 95% CI (documents) | val ppl | bits/byte |"
    rule = "|---|---:|---:|---|---:|---:|"
    if with_accuracy:
        header += " zero-shot mean |"
        rule += "---:|"
    lines = [header, rule]
    for e in entries:
        ci = e.get("val_loss_ci95")
        row = (
            f"| {e['label']} | {e['tokens'] or 0:,} | {e['val_loss']:.4f} | "
            f"{f'[{ci[0]:.4f}, {ci[1]:.4f}]' if ci else 'n/a'} | {e['val_ppl']:.2f} | "
            f"{e['bits_per_byte']:.4f} |"
        )
        if with_accuracy:
            mean = (e.get("zero_shot") or {}).get("mean")
            row += f" {'n/a' if mean is None else f'{100 * mean:.2f}%'} |"
        lines.append(row)
    return lines


def zero_shot_table(entries: Sequence[dict[str, Any]], first_column: str) -> list[str]:
    """Markdown rows: each model's accuracy per task, with lm-eval's standard error."""
    tasks = sorted({t for e in entries if e.get("zero_shot") for t in e["zero_shot"]["tasks"]})
    if not tasks:
        return []
    lines = ["", f"| {first_column} | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for entry in entries:
        values = (entry.get("zero_shot") or {}).get("tasks", {})
        cells = [
            f"{100 * values[t]['value']:.1f} ± {100 * (values[t].get('stderr') or 0):.1f}"
            if t in values else "n/a"
            for t in tasks
        ]  # fmt: skip
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return lines
