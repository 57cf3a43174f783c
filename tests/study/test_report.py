"""The LWS report's sentences on fixed inputs (the default CPU study's final losses)."""

from __future__ import annotations

from elmforge.study.report import conclusion
from elmforge.study.stats import paired_difference, welch_difference

LWS = [5.0178, 4.8643, 4.6892]
UNIFORM = [4.7373, 4.6391, 4.5022]


def test_welch_unresolved_while_the_pairs_resolve():
    welch = conclusion(welch_difference(LWS, UNIFORM), 3)
    assert welch.startswith("No difference resolved: LWS minus uniform validation loss +0.2309")
    assert "Welch t = 1.98" in welch and "3 seeds per arm" in welch
    paired = conclusion(paired_difference(LWS, UNIFORM), 3, paired=True)
    assert paired.startswith("Paired by seed")
    assert "the matched uniform model is lower" in paired
    assert "95% CI [+0.1141, +0.3477], paired t = 8.51, df = 2.0, p = 0.0135, 3 pairs" in paired


def test_each_direction_and_a_single_seed():
    lower = [x - 0.5 for x in UNIFORM]
    assert conclusion(welch_difference(lower, UNIFORM), 3).startswith("Layer-wise scaling reached")
    assert "layer-wise scaling is lower" in conclusion(
        paired_difference(lower, UNIFORM), 3, paired=True
    )
    higher = [x + 0.5 for x in UNIFORM]
    assert conclusion(welch_difference(higher, UNIFORM), 3).startswith("The matched uniform model")
    single = conclusion(welch_difference(LWS[:1], UNIFORM[:1]), 1)
    assert "one run per arm" in single and "not a ranking" in single
