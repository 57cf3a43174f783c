"""results.json / results.md (what was evaluated, with what, and the scores), reading them back, and
side-by-side comparison of several runs (table + bar chart)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmforge.errors import ElmforgeError, OptionError
from elmforge.evaluate.paper import PAPER, match_paper_variant, paper_figure
from elmforge.evaluate.suites import SUITES, headline_metric
from elmforge.files import atomic_write, atomic_write_text
from elmforge.modeldir.loading import context_length_of


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def describe_model(model: Any, model_name: str | None) -> dict[str, Any]:
    config = getattr(model, "config", None)
    first_param = next(iter(model.parameters()), None)
    return {
        "name": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(first_param.dtype).replace("torch.", "") if first_param is not None else None,
        "device": str(first_param.device) if first_param is not None else None,
        "context_length": context_length_of(model),
        "paper_variant": match_paper_variant(config),
    }


def describe_tokenizer(tokenizer: Any, tokenizer_name: str | None) -> dict[str, Any]:
    from elmforge.data.tokenizer import adds_special_tokens

    return {
        "name": tokenizer_name or getattr(tokenizer, "name_or_path", None) or None,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        # Measured, not assumed: lm-eval asks for special tokens, and whether that yields the
        # bos token is up to the tokenizer's post-processor.
        "add_bos_token": adds_special_tokens(tokenizer)[0],
    }


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ElmforgeError(f"{path}: no such results file") from None
    except json.JSONDecodeError as err:
        raise ElmforgeError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ElmforgeError(f"{path}: not an elmforge results.json (no 'results' object)")
    return data


def write_results(
    report: dict[str, Any], out_dir: Path, samples: dict[str, list] | None = None
) -> None:
    """``results.json``, ``results.md`` and, if given, lm-eval's per-document samples."""
    atomic_write_text(out_dir / "results.json", json.dumps(_jsonable(report), indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", render_markdown(report))
    for task, rows in (samples or {}).items():
        lines = "".join(json.dumps(_jsonable(row), ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out_dir / "samples" / f"{task}.jsonl", lines)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def suite_average(report: dict[str, Any]) -> float | None:
    """Mean headline accuracy over the suite's tasks (None if one is missing)."""
    suite = report.get("settings", {}).get("suite")
    if suite not in SUITES:
        return None
    values = []
    for task in SUITES[suite]:
        entry = report["results"].get(task)
        metric = headline_metric(entry) if entry else None
        if metric is None:
            return None
        if metric.startswith("acc"):  # averages are over accuracies (CrowS-Pairs is not one)
            values.append(entry[metric])
    return sum(values) / len(values) if values else None


def displayed_tasks(report: dict[str, Any]) -> list[str]:
    """Tasks to show: all but the members of a group that is shown (MMLU's 57 subjects)."""
    results = report.get("results", {})
    hidden: set[str] = set()

    def hide(name: str) -> None:
        for child in results.get(name, {}).get("subtasks", []):
            hidden.add(child)
            hide(child)

    for name in results:
        hide(name)
    requested = report.get("settings", {}).get("tasks") or []
    order = [t for t in requested if t in results] + [t for t in results if t not in requested]
    return [t for t in order if t not in hidden]


def render_markdown(report: dict[str, Any]) -> str:
    model = report.get("model", {})
    settings = report.get("settings", {})
    variant = model.get("paper_variant")
    suite = settings.get("suite")
    lines = [
        f"# Evaluation of {model.get('name')}",
        "",
        f"- model: {model.get('class')} ({model.get('parameters', 0):,} parameters, "
        f"{model.get('dtype')}, {model.get('device')})"
        + (f", architecture of {variant}" if variant else ""),
        f"- tokenizer: {report.get('tokenizer', {}).get('name')} "
        f"({'bos token added' if report.get('tokenizer', {}).get('add_bos_token') else 'no bos token'})",
        f"- lm-eval {report.get('versions', {}).get('lm_eval')}, {report.get('date')}",
        f"- suite: {suite or '-'}; limit: {settings.get('limit') or 'none'}; "
        f"data: {settings.get('data_dir') or 'Hugging Face hub'}",
        "",
    ]
    results = report.get("results", {})
    if results:
        paper_header = f"paper ({variant})" if variant else "paper"
        lines += [
            f"| task | n | shots | metric | ours (%) | ± stderr | {paper_header} | split |",
            "|---|---:|---:|---|---:|---:|---|---|",
        ]
        for task in displayed_tasks(report):
            entry = results[task]
            metric = headline_metric(entry)
            value = entry.get(metric) if metric else None
            stderr = entry.get(f"{metric}_stderr") if metric else None
            figure = paper_figure(variant, suite, task, entry.get("num_fewshot"))
            split = entry.get("split", "")
            if entry.get("split_fallback"):
                split += " (fallback)"
            lines.append(
                f"| {task} | {entry.get('n', '')} | {entry.get('num_fewshot', '')} | "
                f"{metric or ''} | {_percent(value)} | {_percent(stderr)} | "
                f"{figure.label() if figure else ''} | {split} |"
            )
        average = suite_average(report)
        if average is not None:
            # The suite's own shot counts unless --num-fewshot overrode them.
            shots = None if settings.get("num_fewshot") is None else settings["num_fewshot"]
            figure = paper_figure(variant, suite, "average", shots)
            lines.append(
                f"| **average** | | | | **{_percent(average)}** | | "
                f"{figure.label() if figure else ''} | |"
            )
        lines += [
            "",
            "Metric: normalised accuracy (acc_norm) where lm-eval defines it, else accuracy. "
            f"Paper figures: {PAPER}; only re-checked figures are shown, each with its table, "
            "and only beside a score run with the same few-shot count.",
            "",
        ]
        if settings.get("limit"):
            lines[-1:-1] = [
                f"Scores use the first {settings['limit']} documents of each task (--limit); "
                "the paper's use the full sets.",
            ]
        notes: dict[str, list[str]] = {}
        for task in displayed_tasks(report):
            for note in results[task].get("split_fallback", []):
                notes.setdefault(note, []).append(task)
        for note, tasks in notes.items():
            lines.append(f"- split fallback, {', '.join(tasks)}: {note}")
        if notes:
            lines.append("")
    ppl = report.get("perplexity")
    if ppl:
        lines += [
            "## Perplexity",
            "",
            "| source | split | documents | tokens | loss | perplexity | bits/byte | window / stride |",
            "|---|---|---:|---:|---:|---:|---:|---|",
            f"| {_source_label(ppl['source'])} | {ppl['split']} | {ppl['documents']} | {ppl['tokens']} | "
            f"{ppl['loss']:.4f} | {ppl['perplexity']:.3f} | {ppl['bits_per_byte']:.4f} | "
            f"{ppl['context_length']} / {ppl['stride']} |",
            "",
        ]
    return "\n".join(lines)


def _source_label(source: Any) -> str:
    return json.dumps(source) if isinstance(source, dict) else str(source)


def _comparison_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, list[float | None]]]:
    tasks: dict[str, str] = {}
    for run in runs:
        for task, entry in run["results"].items():
            metric = headline_metric(entry)
            if metric is not None:
                tasks.setdefault(task, metric)
    rows = []
    for task, metric in tasks.items():
        values = [run["results"].get(task, {}).get(metric) for run in runs]
        rows.append((task, metric, values))
    if all(run.get("perplexity") for run in runs):
        rows.append(
            ("perplexity", "bits_per_byte", [r["perplexity"]["bits_per_byte"] for r in runs])
        )
    return rows


def compare_results(
    paths: Sequence[str | Path], out_dir: str | Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Print a side-by-side table of several results.json files; write compare.md and .png
    into ``out_dir`` (which may replace only an earlier ``evaluate`` output, with ``force``)."""
    from elmforge.files import atomic_directory, claim_output

    if len(paths) < 2:
        raise OptionError("paths", "{option} needs at least two results.json files", "--compare")
    out = Path(out_dir) if out_dir is not None else Path("runs/evaluate/compare")
    claim_output(out, "evaluate", force, inputs=tuple(paths))
    runs = [load_results(path) for path in paths]
    names = _run_names(paths, runs)
    rows = _comparison_rows(runs)
    header = ["task", "metric", *names]
    table = [header, ["---"] * len(header)]
    for task, metric, values in rows:
        shown = [
            "" if v is None else (f"{v:.4f}" if metric == "bits_per_byte" else _percent(v))
            for v in values
        ]
        table.append([task, metric, *shown])
    markdown = "\n".join("| " + " | ".join(row) + " |" for row in table) + "\n"
    print(markdown, end="")
    with atomic_directory(out, verb="evaluate") as tmp:
        atomic_write_text(tmp / "compare.md", markdown)
        _bar_chart([r for r in rows if r[1] != "bits_per_byte"], names, tmp / "compare.png")
    chart = out / "compare.png"
    print(f"wrote {out / 'compare.md'} and {chart}")
    return {"runs": names, "rows": rows, "markdown": out / "compare.md", "chart": chart}


def _run_names(paths: Sequence[str | Path], runs: Sequence[dict[str, Any]]) -> list[str]:
    names = [str(run.get("model", {}).get("name") or path) for path, run in zip(paths, runs)]
    if len(set(names)) < len(names):  # same model twice: tell the runs apart by their files
        names = [str(path) for path in paths]
    return names


def _bar_chart(
    rows: list[tuple[str, str, list[float | None]]], names: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))]
        ys = [100 * (values[i] or 0.0) for _, _, values in rows]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{task}\n({metric})" for task, metric, _ in rows], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("elmforge evaluate --compare")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
