"""The uniform arm: uniform, the same width/depth/heads' size, and within 1% of parameters."""

from __future__ import annotations

import pytest

from elmforge.errors import ConfigError
from elmforge.model.config import OpenELMConfig
from elmforge.model.uniform import (
    attention_parameters,
    is_uniform,
    layer_parameters,
    match_uniform,
)
from tests.shapes import MICRO_SHAPE

# The four paper presets, the CPU presets, and shapes the presets do not cover.
SHAPES = [
    ("OpenELM-270M", {}),
    ("OpenELM-450M", {}),
    ("OpenELM-1_1B", {}),
    ("OpenELM-3B", {}),
    ("OpenELM-tiny", {}),
    ("OpenELM-tiny", {"vocab_size": 4096}),
    ("OpenELM-tiny", {"num_transformer_layers": 8, "vocab_size": 4096}),
    ("OpenELM-tiny", MICRO_SHAPE),
    ("OpenELM-tiny", {**MICRO_SHAPE, "num_transformer_layers": 6, "ffn_multipliers": [1.0, 3.0]}),
    ("OpenELM-270M", {"num_transformer_layers": 10, "qkv_multipliers": [0.25, 1.5]}),
    ("OpenELM-270M", {"share_input_output_layers": False, "num_gqa_groups": 2}),
]
SAME = ("num_transformer_layers", "model_dim", "head_dim", "num_gqa_groups", "vocab_size",
        "share_input_output_layers", "normalize_qk_projections", "ffn_with_glu")  # fmt: skip


@pytest.mark.parametrize(("name", "shape"), SHAPES, ids=lambda v: str(v))
def test_uniform_arm_is_uniform_and_matched_within_one_percent(name, shape):
    lws = OpenELMConfig.from_name(name, **shape)
    match = match_uniform(name, shape)
    # Rebuilt from the returned shape alone, as a run will build it.
    uniform = OpenELMConfig.from_name(name, **match.shape)
    assert not is_uniform(lws)
    assert is_uniform(uniform)
    assert isinstance(match.shape["qkv_multipliers"], float)
    assert isinstance(match.shape["ffn_multipliers"], float)
    for field in SAME:
        assert getattr(uniform, field) == getattr(lws, field), field
    assert match.lws_parameters == lws.num_parameters_total()
    assert match.uniform_parameters == uniform.num_parameters_total()
    assert abs(uniform.num_parameters_total() / lws.num_parameters_total() - 1) <= 0.01
    # Attention keeps the LWS model's mean head count (to a GQA group).
    mean_heads = sum(lws.num_query_heads) / lws.num_transformer_layers
    assert abs(uniform.num_query_heads[0] - mean_heads) <= lws.num_gqa_groups / 2
    assert uniform.num_kv_heads[0] * uniform.num_gqa_groups == uniform.num_query_heads[0]
    assert uniform.ffn_dims()[0] % 8 == 0


def test_paper_presets_keep_the_attention_share_and_layer_budget():
    for name in ("OpenELM-270M", "OpenELM-1_1B"):
        lws = OpenELMConfig.from_name(name)
        uniform = match_uniform(name).config
        share = attention_parameters(lws) / layer_parameters(lws)
        assert attention_parameters(uniform) / layer_parameters(uniform) == pytest.approx(
            share, abs=0.01
        )
        assert layer_parameters(uniform) == pytest.approx(layer_parameters(lws), rel=0.002)


def test_vocabulary_counts_but_stays_out_of_the_shape():
    match = match_uniform("OpenELM-tiny", {}, vocab_size=4096)
    assert "vocab_size" not in match.shape
    assert (
        match.lws_parameters
        == OpenELMConfig.from_name("OpenELM-tiny", vocab_size=4096).num_parameters_total()
    )


def test_tighter_tolerance_is_honoured_or_refused():
    loose = match_uniform("OpenELM-tiny", {**MICRO_SHAPE, "qkv_multipliers": [0.5, 2.0]})
    assert 0.001 < abs(loose.relative_gap) <= 0.01
    with pytest.raises(ConfigError, match=r"within 0\.1%"):
        match_uniform(
            "OpenELM-tiny", {**MICRO_SHAPE, "qkv_multipliers": [0.5, 2.0]}, tolerance=0.001
        )


def test_already_uniform_is_refused():
    with pytest.raises(ConfigError, match="already uniform"):
        match_uniform("OpenELM-tiny", {"qkv_multipliers": 1.0, "ffn_multipliers": 2.0})


def test_a_budget_no_uniform_shape_can_match_is_refused():
    # Two layers of width 32: one step of the FFN width moves the total by more than 2%.
    shape = {**MICRO_SHAPE, "model_dim": 32, "head_dim": 8, "qkv_multipliers": [0.5, 2.0]}
    with pytest.raises(ConfigError, match=r"no uniform shape comes within 1\.0%.*35,520"):
        match_uniform("OpenELM-tiny", shape, vocab_size=384)


@pytest.mark.parametrize("config", ["lws-cpu.yaml", "lws-270m.yaml"])
def test_shipped_study_configs_load_and_match(config):
    from elmforge.study.config import DEFAULT_LWS_CONFIG, LwsStudyConfig

    study = LwsStudyConfig.load(DEFAULT_LWS_CONFIG.parent / config)
    run = study.run_config()
    vocab = 4096 if run.data.tokenizer == "bpe" else 32000
    match = match_uniform(run.model.name, run.model.shape, study.study.tolerance, vocab)
    assert abs(match.relative_gap) <= study.study.tolerance
    assert study.study.seeds == 3


@pytest.mark.parametrize("name", ["OpenELM-270M", "OpenELM-450M", "OpenELM-1_1B"])
def test_bench_twin_is_the_study_arm(name: str) -> None:
    """``bench --against uniform`` and ``study lws`` compare the same uniform model: the twin built
    from a model's config equals the arm solved from its preset name."""
    from elmforge.model.config import OpenELMConfig
    from elmforge.model.uniform import uniform_twin

    twin = uniform_twin(OpenELMConfig.from_name(name))
    arm = match_uniform(name).config
    for key in ("num_query_heads", "num_kv_heads", "ffn_multipliers", "qkv_multipliers"):
        assert getattr(twin, key) == getattr(arm, key), key
    assert twin.ffn_dims() == arm.ffn_dims()
    assert twin.num_parameters_total() == arm.num_parameters_total()
