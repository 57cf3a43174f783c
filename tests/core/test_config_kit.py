"""The config kit: one override grammar for every verb that trains, errors that name the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from elmforge.cli.main import build_parser
from elmforge.config import overrides_of
from elmforge.errors import ConfigError
from elmforge.train.config import RunConfig
from tests.shapes import micro_model_section

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb", ["pretrain", "demo"])
def test_training_verbs_share_the_generated_flags(verb):
    extra = ["--config", "x.yaml", "--out", "o"] if verb == "pretrain" else []
    for spelling in (["--optim.lr", "1e-3"], ["--optim.lr=1e-3"]):
        args = build_parser().parse_args(
            [verb, *extra, *spelling, "--set", "model.shape.num_transformer_layers=3"]
        )
        assert overrides_of(args) == ["optim.lr=1e-3", "model.shape.num_transformer_layers=3"]


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["demo", "--optim.learning_rate", "1"])
    assert exit_info.value.code == 2
    assert "--optim.learning_rate" in capsys.readouterr().err


def test_override_errors_blame_the_command_line_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": micro_model_section()}))
    with pytest.raises(ConfigError, match=r"^command-line override: model\.shape\.num_layerz"):
        RunConfig.from_yaml(path, ["model.shape.num_layerz=3"])
    path.write_text(yaml.safe_dump({"optim": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=rf"^{path}: optim\.lr"):
        RunConfig.from_yaml(path, ["seed=1"])


def test_bad_top_level_seed_is_named_seed():
    with pytest.raises(ConfigError, match=r": seed: must be >= 0"):
        RunConfig.from_dict({"seed": -1})


def test_empty_yaml_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert RunConfig.from_yaml(path) == RunConfig.from_dict({})


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"- a\n- b\n", b"a: [unclosed"])
def test_unreadable_yaml_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_yaml(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_bpe_vocab_size_lives_in_the_data_section():
    config = RunConfig.from_yaml(REPO_ROOT / "elmforge" / "configs" / "tiny-cpu.yaml")
    assert config.data.bpe_vocab_size == 8192
    with pytest.raises(ConfigError, match=r"data\.bpe_vocab_size"):
        RunConfig.from_dict({"data": {"bpe_vocab_size": 10}})
    with pytest.raises(ConfigError, match=r"bpe_vocab_size: unknown key"):
        RunConfig.from_dict({"bpe_vocab_size": 8192})
