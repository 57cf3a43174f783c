"""Run configs: the YAML schema, overrides, validation, the paper configs, CoreNet import."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from elmforge.cli.main import main
from elmforge.config import apply_overrides, field_docs
from elmforge.errors import ConfigError
from elmforge.train.config import RunConfig, documented_keys
from tests.shapes import MICRO_SHAPE, micro_model_section
from tests.train.helpers import REPO_ROOT, write_yaml

CONFIGS = REPO_ROOT / "elmforge" / "configs"
# docs/openelm.md, "Pretraining recipe" (paper Table 9 / CoreNet): peak LR per variant.
PAPER_LR = {"270m": 5.3e-3, "450m": 3.9e-3, "1_1b": 2.4e-3, "3b": 1.2e-3}
PAPER_NAME = {"270m": "OpenELM-270M", "450m": "OpenELM-450M", "1_1b": "OpenELM-1_1B",
              "3b": "OpenELM-3B"}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(PAPER_LR))
def test_paper_configs_carry_the_published_recipe(variant: str) -> None:
    config = RunConfig.from_yaml(CONFIGS / f"openelm-{variant}.yaml")
    assert config.model.name == PAPER_NAME[variant]
    assert config.optim.lr == PAPER_LR[variant]
    assert (config.optim.beta1, config.optim.beta2, config.optim.eps) == (0.9, 0.95, 1e-8)
    assert (config.optim.weight_decay, config.optim.grad_clip, config.optim.z_loss) == (
        0.1,
        1.0,
        1e-4,
    )
    assert config.schedule.max_steps == 350_000
    assert config.schedule.warmup_steps == 5_000
    assert config.schedule.warmup_init_lr == 1e-6
    assert config.schedule.min_lr_ratio == 0.1
    assert config.train.precision == "bf16"
    assert config.seq_len == 2048
    assert config.data.min_characters == 200 and config.data.min_tokens == 256
    # About 4M tokens per step: 128 GPUs x 16 x 2048 without accumulation, 8 GPUs with 16.
    assert config.train.global_batch_tokens == 4_194_304
    assert config.grad_accum_for(128) == 1 and config.grad_accum_for(8) == 16
    assert config.model.activation_checkpointing is (variant != "270m")
    assert config.checkpoint.save_every == 5_000


def test_tiny_cpu_config_loads() -> None:
    config = RunConfig.from_yaml(CONFIGS / "tiny-cpu.yaml")
    assert config.model.name == "OpenELM-tiny"
    assert config.seq_len == 256


def test_overrides_are_typed_and_yaml_1e_minus_3_is_a_float(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_yaml(tmp_path / "run.yaml", {"model": micro_model_section()})
    config = RunConfig.from_yaml(
        path, ["optim.lr=1e-3", "train.micro_batch_size=8", "model.shape.num_transformer_layers=3",
               "log.peak_flops=1e12", "train.grad_accum=2"]
    )  # fmt: skip
    assert config.optim.lr == 1e-3
    assert config.train.micro_batch_size == 8
    assert config.model.shape == {**MICRO_SHAPE, "num_transformer_layers": 3}
    assert config.log.peak_flops == 1e12
    assert config.train.grad_accum == 2
    # Both spellings of a flag reach the config: `--key value` and `--key=value`.
    assert main(["pretrain", "--config", str(path), "--out", "unused", "--optim.lr", "1e-3",
                 "--seed=4", "--print-config"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and "\nseed: 4" in printed
    # --set and the --section.key flags are one list: the one given last wins, either way round.
    for argv, lr in ((["--set", "optim.lr=0.1", "--optim.lr", "0.2"], "0.2"),
                     (["--optim.lr", "0.2", "--set", "optim.lr=0.1"], "0.1"),
                     (["--optim.lr", "0.3", "--optim.lr=0.4"], "0.4")):  # fmt: skip
        assert main(["pretrain", "--config", str(path), "--out", "unused", *argv,
                     "--print-config"]) == 0  # fmt: skip
        assert f"lr: {lr}\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"optim": {"learning_rate": 1}}, "optim.learning_rate"),
        ({"optimizer": {}}, "optimizer"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"train": {"precision": "fp16"}}, "train.precision"),
        ({"train": {"micro_batch_size": 2.5}}, "train.micro_batch_size"),
        ({"log": {"tensorboard": "yes"}}, "log.tensorboard"),
        ({"schedule": {"warmup_steps": 10, "max_steps": 5}}, "schedule.warmup_steps"),
        ({"model": {"name": "OpenELM-9B"}}, "model.name"),
        ({"model": {"shape": {"num_transformer_layers": 0}}}, "model.shape"),
        ({"data": {"seq_len": 0}}, "data.seq_len"),
        ({"data": {"colour": "blue"}}, "data.colour"),
    ],
)
def test_bad_keys_and_values_are_errors_naming_them(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        RunConfig.from_dict(raw)


def test_every_field_is_documented() -> None:
    from elmforge.train import config as config_module

    sections = [config_module.RunConfig, config_module.ModelSection, config_module.OptimSection,
                config_module.ScheduleSection, config_module.TrainSection,
                config_module.CheckpointSection, config_module.LogSection]  # fmt: skip
    for cls in sections:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
    keys = documented_keys()
    assert "optim.lr" in keys and "data.seq_len" in keys and "checkpoint.keep_last" in keys


def test_corenet_config_maps_onto_the_paper_config() -> None:
    corenet = RunConfig.from_corenet_yaml(CONFIGS / "corenet" / "openelm_270M.yaml")
    ours = RunConfig.from_yaml(CONFIGS / "openelm-270m.yaml")
    for section in ("optim", "schedule"):
        assert getattr(corenet, section) == getattr(ours, section), section
    assert corenet.model.name == "OpenELM-270M"
    assert corenet.train.micro_batch_size == 16 and corenet.train.precision == "bf16"
    assert corenet.checkpoint.save_every == 5000 and corenet.checkpoint.keep_last == 0
    assert corenet.data.seq_len == 2048 and corenet.data.mode == "padding"
    assert corenet.data.sources[0]["text_key"] == "content"
    assert corenet.data.tokenizer == "data/llama2/tokenizer.model"


def test_corenet_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load((CONFIGS / "corenet" / "openelm_270M.yaml").read_text())
    raw["optim"]["sgd"] = {"momentum": 0.9}
    path = write_yaml(tmp_path / "corenet.yaml", raw)
    with pytest.raises(ConfigError, match=r"optim\.sgd\.momentum"):
        RunConfig.from_corenet_yaml(path)
    raw["optim"].pop("sgd")
    raw["optim"]["name"] = "lamb"
    write_yaml(path, raw)
    with pytest.raises(ConfigError, match=r"optim\.name.*adamw"):
        RunConfig.from_corenet_yaml(path)


def test_corenet_override_errors_are_the_command_lines_not_the_files() -> None:
    path = CONFIGS / "corenet" / "openelm_270M.yaml"
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_corenet_yaml(path, ["optim.lr=-1"])
    assert str(caught.value).startswith("command-line override: optim.lr")
    assert str(path) not in str(caught.value)
    assert RunConfig.from_corenet_yaml(path, ["optim.lr=1e-3"]).optim.lr == 1e-3


def test_cli_prints_the_resolved_config_with_overrides(capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", str(CONFIGS / "openelm-270m.yaml"), "--out", "unused",
                 "--optim.lr", "1e-3", "--set", "model.shape.num_transformer_layers=4",
                 "--print-config"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and "num_transformer_layers: 4" in printed


def test_cli_reports_a_bad_value_in_one_line(capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", str(CONFIGS / "openelm-270m.yaml"), "--out", "unused",
                 "--train.precision", "fp8", "--print-config"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.precision" in err and "fp8" in err


def test_apply_overrides_refuses_malformed_items() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_model_shape_applies_on_top_of_the_named_preset():

    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, None

        def __len__(self) -> int:
            return 300

    run = {"model": micro_model_section(num_transformer_layers=3),
           "data": {"seq_len": 32}}  # fmt: skip
    model = RunConfig.from_dict(run).model_config(Tokenizer())
    assert model.num_transformer_layers == 3 and len(model.num_query_heads) == 3
    assert model.vocab_size == 320  # auto: the tokenizer's size rounded up to 64
