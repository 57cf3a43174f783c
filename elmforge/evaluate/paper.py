"""Figures from the OpenELM paper, for display beside measured ones only (never test expectations).

Only figures re-checked against the paper are listed (docs/openelm.md, "Evaluation"): the
Table 1 headline averages over the OpenLLM-leaderboard tasks and OpenELM-270M's zero-shot
WinoGrande accuracy (Table 4a). Others are left out rather than quoted from memory; add one only with its table and
``checked=False`` so the report marks it "not re-checked".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAPER = "Mehta et al. 2024, arXiv 2404.14619"
PAPER_VARIANTS = ("OpenELM-270M", "OpenELM-450M", "OpenELM-1_1B", "OpenELM-3B")


@dataclass(frozen=True)
class PaperFigure:
    model: str
    suite: str  # "zero-shot" | "openllm" | "llm360"
    task: str  # lm-eval task name, or "average" for a suite average
    value: float  # percent
    table: str
    num_fewshot: int | None = 0  # None: each task's count in the suite (for averages)
    checked: bool = True
    note: str = ""

    def label(self) -> str:
        mark = "" if self.checked else ", not re-checked"
        return f"{self.value:.2f} ({self.table}{mark})"


PAPER_FIGURES: tuple[PaperFigure, ...] = (
    PaperFigure("OpenELM-270M", "zero-shot", "winogrande", 53.91, "Table 4a"),
    PaperFigure(
        "OpenELM-1_1B",
        "openllm",
        "average",
        45.93,
        "Table 1",
        num_fewshot=None,
        note="1.5T pretraining tokens",
    ),
)
# Table 1's comparison models, OpenLLM-leaderboard average (pretraining tokens).
PAPER_BASELINES: tuple[PaperFigure, ...] = (
    PaperFigure("OPT-1.3B", "openllm", "average", 41.49, "Table 1", None, note="0.2T tokens"),
    PaperFigure("Pythia-1.4B", "openllm", "average", 41.83, "Table 1", None, note="0.3T tokens"),
    PaperFigure("MobiLlama-1.3B", "openllm", "average", 43.55, "Table 1", None, note="1.3T tokens"),
    PaperFigure("OLMo-1.2B", "openllm", "average", 43.57, "Table 1", None, note="3.0T tokens"),
)


def paper_figure(
    model: str | None, suite: str | None, task: str, num_fewshot: int | None = 0
) -> PaperFigure | None:
    """The paper's figure for ``task`` run with ``num_fewshot`` shots (None: the suite's own
    counts), or None: a figure is only shown beside a score measured the same way."""
    if model is None:
        return None
    for figure in PAPER_FIGURES:
        if (
            figure.model == model
            and figure.task == task
            and suite in (None, figure.suite)
            and figure.num_fewshot == num_fewshot
        ):
            return figure
    return None


# Architecture fields that identify a published variant (behaviour from config, not names).
_SHAPE_FIELDS = (
    "num_transformer_layers",
    "model_dim",
    "head_dim",
    "num_query_heads",
    "num_kv_heads",
    "vocab_size",
)


def match_paper_variant(config: Any) -> str | None:
    """The published variant whose architecture ``config`` has, if any (weights aside)."""
    if getattr(config, "model_type", None) != "openelm":
        return None
    from elmforge.model.config import OpenELMConfig

    shape = tuple(_as_plain(getattr(config, name, None)) for name in _SHAPE_FIELDS)
    for name in PAPER_VARIANTS:
        preset = OpenELMConfig.from_name(name)
        if shape == tuple(_as_plain(getattr(preset, field)) for field in _SHAPE_FIELDS):
            return name
    return None


def _as_plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(round(float(v), 4) if isinstance(v, float) else v for v in value)
    return value
