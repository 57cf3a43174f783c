"""Evaluation: lm-evaluation-harness suites (offline-capable), perplexity, paper comparison.

Names are imported on first use, so ``elmforge.evaluate.suites`` loads without lm-eval or torch
(the CLI lists the suites before importing anything heavy).
"""

from __future__ import annotations

from elmforge.lazy import lazy_attributes

_LAZY = {
    "SUITES": "elmforge.evaluate.suites",
    "compare_results": "elmforge.evaluate.report",
    "evaluate_checkpoint": "elmforge.evaluate.harness",
    "evaluate_model": "elmforge.evaluate.harness",
    "load_model_for_eval": "elmforge.evaluate.loading",
    "load_results": "elmforge.evaluate.harness",
    "perplexity": "elmforge.evaluate.perplexity",
    "perplexity_of_source": "elmforge.evaluate.perplexity",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
