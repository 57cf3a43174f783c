"""The fine-tuning config: Apple's recipes as shipped, the shared flags, derived step counts."""

from __future__ import annotations

import pytest

from elmforge.cli.main import build_parser
from elmforge.config import overrides_of
from elmforge.errors import ConfigError
from elmforge.finetune.config import DEFAULT_TARGETS, FinetuneConfig
from elmforge.package_data import CONFIG_DIR

CONFIGS = CONFIG_DIR / "finetune"
# docs/openelm.md, Instruction tuning: per size epochs, learning rate and loss of Apple's DPO runs.
DPO_RECIPES = {
    "270m": (5, 2e-5, "hinge"),
    "450m": (8, 3e-5, "hinge"),
    "1_1b": (5, 5e-5, "sigmoid"),
    "3b": (10, 1e-4, "hinge"),
}


@pytest.mark.parametrize("size", list(DPO_RECIPES))
def test_dpo_recipes_are_apples(size: str) -> None:
    config = FinetuneConfig.load(CONFIGS / f"dpo-openelm-{size}.yaml")
    epochs, lr, loss = DPO_RECIPES[size]
    assert (config.train.epochs, config.optim.lr, config.dpo.loss) == (epochs, lr, loss)
    assert config.dpo.beta == 0.01 and config.peft == "none"
    assert (config.data.max_length, config.data.max_prompt_length) == (1024, 512)
    assert config.schedule.warmup_ratio == 0.1 and config.schedule.min_lr_ratio == 0.0
    assert (config.train.micro_batch_size, config.train.grad_accum) == (8, 2)
    # 60k pairs at 8 x 2: an epoch is 3750 steps, a tenth of them warm-up.
    assert config.steps_for(60_000) == (3750 * epochs, 375 * epochs)


@pytest.mark.parametrize("size", list(DPO_RECIPES))
def test_lora_recipes_are_corenets(size: str) -> None:
    config = FinetuneConfig.load(CONFIGS / f"lora-commonsense-openelm-{size}.yaml")
    assert config.peft == "lora" and config.lora.targets == list(DEFAULT_TARGETS)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (32, 32.0, 0.1)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.beta2) == (3e-4, 0.0, 0.95)
    assert config.schedule.warmup_steps == 1000 and config.schedule.warmup_init_lr == 1e-6
    assert config.optim.lr * config.schedule.min_lr_ratio == pytest.approx(3e-5)
    assert config.train.epochs == 3 and config.optim.z_loss > 0
    assert config.data.prompt_style == "llm-adapters"


def test_flags_are_the_shared_grammar() -> None:
    args = build_parser().parse_args([
        "finetune", "dpo", "m", "--data", "d", "--out", "o", "--optim.lr", "1e-4", "--peft",
        "dora", "--lora.targets", "qkv_proj,out_proj", "--schedule.max_steps=7", "--loss",
        "hinge", "--train.grad_accum", "2", "--seed", "3",
    ])  # fmt: skip
    config = FinetuneConfig.load(None, overrides_of(args))
    assert config.optim.lr == 1e-4 and config.peft == "dora" and config.dpo.loss == "hinge"
    assert config.lora.targets == ["qkv_proj", "out_proj"] and config.schedule.max_steps == 7
    assert (config.train.grad_accum, config.seed) == (2, 3)
    # A partly given section keeps fine-tuning's defaults for the rest.
    assert config.optim.weight_decay == 0.0 and config.optim.beta2 == 0.999
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["finetune", "sft", "m", "--data", "d", "--out", "o", "--beta", "1"]
        )


def test_an_alias_and_its_key_flag_last_one_wins() -> None:
    def loss(*flags: str) -> str:
        argv = ["finetune", "dpo", "m", "--data", "d", "--out", "o", *flags]
        return FinetuneConfig.load(None, overrides_of(build_parser().parse_args(argv))).dpo.loss

    assert loss("--loss", "hinge", "--dpo.loss", "sigmoid") == "sigmoid"
    assert loss("--dpo.loss", "sigmoid", "--loss", "hinge") == "hinge"
    assert loss("--set", "dpo.loss=hinge", "--loss", "sigmoid") == "sigmoid"


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"command-line override: peft: expected one of"):
        FinetuneConfig.load(None, ["peft=qlora"])
    with pytest.raises(ConfigError, match=r"data.max_prompt_length: 600 must be below"):
        FinetuneConfig.load(None, ["data.max_length=512", "data.max_prompt_length=600"])
    with pytest.raises(ConfigError, match="schedule.warmup_steps: 50 exceeds the run's 10 steps"):
        FinetuneConfig.load(None, ["schedule.max_steps=10", "schedule.warmup_steps=50"]).steps_for(
            5
        )
