"""OpenELMConfig: the layer-wise scaling rule, presets, Apple's config.json, validation."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

import elmforge
from elmforge import OpenELMConfig, make_divisible
from elmforge.cli.main import main
from tests.shapes import micro_config

# docs/openelm.md, "Variants and parameter counts": parameters, the tied embedding counted once.
PAPER_PARAMETERS = {
    "OpenELM-270M": 271_527_168,
    "OpenELM-450M": 457_179_136,
    "OpenELM-1_1B": 1_079_891_456,
    "OpenELM-3B": 3_036_647_424,
}

# Apple's apple/OpenELM-270M config.json, as published on the hub.
APPLE_270M_CONFIG = {
    "activation_fn_name": "swish",
    "architectures": ["OpenELMForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_openelm.OpenELMConfig",
        "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
    },
    "bos_token_id": 1,
    "eos_token_id": 2,
    "ffn_dim_divisor": 256,
    "ffn_multipliers": [
        0.5,
        0.73,
        0.97,
        1.2,
        1.43,
        1.67,
        1.9,
        2.13,
        2.37,
        2.6,
        2.83,
        3.07,
        3.3,
        3.53,
        3.77,
        4.0,
    ],
    "ffn_with_glu": True,
    "head_dim": 64,
    "initializer_range": 0.02,
    "max_context_length": 2048,
    "model_dim": 1280,
    "model_type": "openelm",
    "normalization_layer_name": "rms_norm",
    "normalize_qk_projections": True,
    "num_gqa_groups": 4,
    "num_kv_heads": [3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5],
    "num_query_heads": [12, 12, 12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20],
    "num_transformer_layers": 16,
    "qkv_multipliers": [0.5, 1.0],
    "rope_freq_constant": 10000,
    "rope_max_length": 4096,
    "share_input_output_layers": True,
    "torch_dtype": "float32",
    "transformers_version": "4.39.3",
    "use_cache": True,
    "vocab_size": 32000,
}
# Fields every reader of Apple's layout relies on (docs/openelm.md, "Checkpoint layouts").
APPLE_FIELDS = [
    "model_dim", "num_transformer_layers", "head_dim", "num_query_heads", "num_kv_heads",
    "num_gqa_groups", "ffn_multipliers", "qkv_multipliers", "ffn_dim_divisor", "ffn_with_glu",
    "normalize_qk_projections", "share_input_output_layers", "rope_freq_constant",
    "rope_max_length", "max_context_length", "vocab_size", "activation_fn_name",
    "normalization_layer_name", "initializer_range", "bos_token_id", "eos_token_id",
]  # fmt: skip


@pytest.mark.parametrize("name", list(PAPER_PARAMETERS))
def test_preset_parameter_counts_match_the_paper(name):
    assert OpenELMConfig.from_name(name).num_parameters_total() == PAPER_PARAMETERS[name]


def test_270m_heads_scale_from_12_to_20():
    config = OpenELMConfig.from_name("OpenELM-270M")
    assert config.num_query_heads[0] == 12 and config.num_query_heads[-1] == 20
    assert config.num_kv_heads[0] == 3 and config.num_kv_heads[-1] == 5
    assert config.num_query_heads == APPLE_270M_CONFIG["num_query_heads"]
    assert config.num_kv_heads == APPLE_270M_CONFIG["num_kv_heads"]
    assert config.ffn_multipliers == APPLE_270M_CONFIG["ffn_multipliers"]


def test_make_divisible_is_mobilenets_rule():
    assert make_divisible(640, 256) == 768  # 512 would be more than 10% down
    assert make_divisible(1280 * 0.73, 256) == 1024
    assert make_divisible(3, 8) == 8
    assert make_divisible(1300, 256) == 1280


def test_uniform_allocation_from_single_numbers():
    config = OpenELMConfig(
        num_transformer_layers=4, model_dim=256, head_dim=32, num_gqa_groups=2,
        qkv_multipliers=1.0, ffn_multipliers=2.0, ffn_dim_divisor=64, vocab_size=100,
    )  # fmt: skip
    assert config.num_query_heads == [8] * 4
    assert config.num_kv_heads == [4] * 4
    assert config.ffn_dims() == [512] * 4


def test_model_parameter_count_equals_config_count():
    config = OpenELMConfig.from_name("OpenELM-tiny")
    model = elmforge.OpenELMForCausalLM(config)
    assert model.num_parameters() == config.num_parameters_total()
    untied = micro_config(share_input_output_layers=False)
    model = elmforge.OpenELMForCausalLM(untied)
    assert model.num_parameters() == untied.num_parameters_total()


def test_apple_config_json_loads_unchanged_and_writes_back(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(APPLE_270M_CONFIG))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, OpenELMConfig)
    assert config.num_parameters_total() == PAPER_PARAMETERS["OpenELM-270M"]
    out = tmp_path / "out"
    config.save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    for field in APPLE_FIELDS:
        assert written[field] == APPLE_270M_CONFIG[field], field
    assert written["model_type"] == "openelm"
    assert "tie_word_embeddings" not in written


def test_preset_config_json_has_every_apple_field(tmp_path):
    OpenELMConfig.from_name("OpenELM-270M").save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    for field in APPLE_FIELDS:
        assert written[field] == APPLE_270M_CONFIG[field], field


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (dict(num_gqa_groups=3, num_query_heads=[4, 4]), "num_gqa_groups"),
        (dict(model_dim=0), "model_dim"),
        (dict(head_dim=-4), "head_dim"),
        (dict(num_transformer_layers=0), "num_transformer_layers"),
        (dict(num_query_heads=[4, 4, 4]), "num_query_heads"),
        (dict(ffn_multipliers=[1.0, 2.0, 3.0]), "ffn_multipliers"),
        (dict(num_query_heads=[4, 6], num_kv_heads=[1, 4]), "num_kv_heads"),
        (dict(qkv_multipliers=[0.5, 0.7, 1.0]), "qkv_multipliers"),
        (dict(vocab_size=2.5), "vocab_size"),
    ],
)
def test_impossible_shapes_are_rejected_naming_the_field(fields, named):
    base = dict(num_transformer_layers=2, model_dim=64, head_dim=16, num_gqa_groups=4,
                qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0), vocab_size=100)  # fmt: skip
    base.update(fields)
    with pytest.raises(ValueError, match=named):
        OpenELMConfig(**base)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="OpenELM-270M"):
        OpenELMConfig.from_name("OpenELM-9B")


def test_info_cli_prints_table_and_plot(tmp_path, capsys):
    assert main(["info", "OpenELM-270M", "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "271,527,168" in out
    assert "| 0 | 12 | 3 | 768 |" in out and "| 15 | 20 | 5 | 5120 |" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_info_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert main(["info", str(bad)]) == 2
    (bad / "config.json").write_text(json.dumps({**APPLE_270M_CONFIG, "num_gqa_groups": 3}))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("elmforge info: error:") for line in err)
    assert "num_gqa_groups" in err[2] and "config.json" in err[1]
