"""Evaluation: lm-evaluation-harness suites (offline-capable), perplexity, paper comparison."""

from elmforge.evaluate.harness import (
    SUITES,
    evaluate_checkpoint,
    evaluate_model,
    load_results,
)
from elmforge.evaluate.loading import load_model_for_eval
from elmforge.evaluate.perplexity import perplexity, perplexity_of_source
from elmforge.evaluate.report import compare_results

__all__ = [
    "SUITES",
    "compare_results",
    "evaluate_checkpoint",
    "evaluate_model",
    "load_model_for_eval",
    "load_results",
    "perplexity",
    "perplexity_of_source",
]
