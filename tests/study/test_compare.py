"""Differences between two models of one run, on fixed inputs."""

from __future__ import annotations

import math

import pytest

from elmforge.study.compare import accuracy_difference, paired_loss_difference


def _zero_shot(**tasks: tuple[float, float]) -> dict:
    return {"zero_shot": {"tasks": {t: {"value": v, "stderr": e} for t, (v, e) in tasks.items()}}}


def test_accuracy_difference_is_first_minus_second_with_a_normal_interval():
    better = _zero_shot(arc_easy=(0.60, 0.03), piqa=(0.70, 0.04), sciq=(0.9, 0.01))
    worse = _zero_shot(arc_easy=(0.50, 0.03), piqa=(0.66, 0.04))
    result = accuracy_difference(better, worse)
    assert result["tasks"] == ["arc_easy", "piqa"]  # the tasks both have
    assert result["difference"] == pytest.approx((0.10 + 0.04) / 2)
    se = math.sqrt(2 * 0.03**2 + 2 * 0.04**2) / 2  # four independent errors, mean of two tasks
    low, high = result["ci95"]
    assert low == pytest.approx(0.07 - 1.959964 * se, abs=1e-6)
    assert high == pytest.approx(0.07 + 1.959964 * se, abs=1e-6)
    assert accuracy_difference(worse, better)["difference"] == pytest.approx(-0.07)
    assert accuracy_difference(better, {"zero_shot": None}) is None


def test_paired_loss_difference_weights_documents_by_tokens():
    a = {"document_nll": [12.0, 30.0, 9.0], "document_tokens": [4, 10, 3]}
    b = {"document_nll": [8.0, 20.0, 9.0], "document_tokens": [4, 10, 3]}
    result = paired_loss_difference(a, b)
    assert result["difference"] == pytest.approx((4.0 + 10.0 + 0.0) / 17)
    assert result["documents"] == 3
    low, high = result["ci95"]
    assert low < result["difference"] < high
