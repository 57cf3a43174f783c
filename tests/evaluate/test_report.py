"""results.md shows the paper's re-checked figures beside ours (display only)."""

from __future__ import annotations

from elmforge.evaluate.paper import PAPER_FIGURES, match_paper_variant
from elmforge.evaluate.report import render_markdown, suite_average
from elmforge.model.config import OpenELMConfig
from tests.shapes import micro_config


def _report(variant: str | None, suite: str, results: dict) -> dict:
    return {
        "model": {"name": "m", "class": "OpenELMForCausalLM", "paper_variant": variant},
        "tokenizer": {"name": "t"},
        "versions": {"lm_eval": "0.4.13"},
        "settings": {"suite": suite, "tasks": list(results)},
        "results": results,
    }


def test_variant_is_recognised_from_the_architecture():
    assert match_paper_variant(OpenELMConfig.from_name("OpenELM-270M")) == "OpenELM-270M"
    assert match_paper_variant(OpenELMConfig.from_name("OpenELM-1_1B")) == "OpenELM-1_1B"
    assert match_paper_variant(micro_config()) is None


def test_paper_figures_are_shown_with_their_table_only_for_the_matching_variant():
    results = {"winogrande": {"acc": 0.5, "n": 10, "num_fewshot": 0}}
    markdown = render_markdown(_report("OpenELM-270M", "zero-shot", results))
    assert "| winogrande | 10 | 0 | acc | 50.00 |" in markdown
    assert "53.91 (Table 4a)" in markdown
    assert "53.91" not in render_markdown(_report("OpenELM-450M", "zero-shot", results))
    assert "53.91" not in render_markdown(_report(None, "zero-shot", results))
    # A 5-shot score is not shown beside the paper's 0-shot figure.
    five_shot = {"winogrande": {"acc": 0.5, "n": 10, "num_fewshot": 5}}
    assert "53.91" not in render_markdown(_report("OpenELM-270M", None, five_shot))


def test_suite_average_row_uses_the_headline_metric():
    results = {
        "arc_challenge": {"acc": 0.2, "acc_norm": 0.3},
        "hellaswag": {"acc": 0.4, "acc_norm": 0.5},
        "mmlu": {"acc": 0.25},
        "truthfulqa_mc2": {"acc": 0.4},
        "winogrande": {"acc": 0.55},
    }
    report = _report("OpenELM-1_1B", "openllm", results)
    assert abs(suite_average(report) - (0.3 + 0.5 + 0.25 + 0.4 + 0.55) / 5) < 1e-12
    assert "45.93 (Table 1)" in render_markdown(report)
    report["settings"]["num_fewshot"] = 0  # not the leaderboard's shot counts
    assert "45.93" not in render_markdown(report)
    report["settings"].update(num_fewshot=None, limit=20)
    assert "first 20 documents of each task" in render_markdown(report)


def test_only_checked_figures_are_listed_unmarked():
    for figure in PAPER_FIGURES:
        assert figure.table.startswith("Table")
        assert figure.checked or "not re-checked" in figure.label()
