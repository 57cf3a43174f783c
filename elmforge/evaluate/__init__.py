"""Evaluation: lm-evaluation-harness suites (offline-capable), perplexity, paper comparison.

Names are imported on first use, so ``elmforge.evaluate.suites`` loads without lm-eval or torch
(the CLI lists the suites before importing anything heavy). ``perplexity`` is the submodule:
``from elmforge.evaluate.perplexity import perplexity`` for the function.
"""

from __future__ import annotations

from elmforge.lazy import lazy_attributes

_LAZY = {
    "SUITES": "elmforge.evaluate.suites",
    "EvalRequest": "elmforge.evaluate.request",
    "compare_results": "elmforge.evaluate.report",
    "evaluate_model": "elmforge.evaluate.harness",
    "load_and_evaluate": "elmforge.evaluate.harness",
    "load_results": "elmforge.evaluate.report",
    "perplexity_of_source": "elmforge.evaluate.perplexity",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
