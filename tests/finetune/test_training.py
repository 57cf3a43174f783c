"""Fine-tuning runs end to end (library calls on a micro model): SFT learns a tiny set, DPO
raises the preference margin on held-aside pairs, and the run directory holds what it should."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from elmforge.data.chat import APPLE_CHAT_TEMPLATE, render_chat
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.data import PreferenceRow
from elmforge.finetune.losses import preference_margin
from elmforge.finetune.tokenize import encode_preferences, pad_id_of
from elmforge.finetune.trainer import FinetuneJob, finetune
from tests.finetune.conftest import COLOURS, THINGS, instruction_rows, write_json, write_jsonl
from tests.shapes import micro_config

QUICK = ["log.progress=plain", "log.log_every=2", "checkpoint.save_every=100",
         "schedule.warmup_ratio=0.0", "train.num_threads=1"]  # fmt: skip


def style_pairs(things: list[str]) -> list[dict[str, str]]:
    """Chosen: a plain sentence; rejected: the same sentence with a rude tail (a pattern DPO can
    learn and that carries over to things it never saw)."""
    return [
        {
            "prompt": f"Describe the {thing}.",
            "chosen": f" The {thing} is {colour}.",
            "rejected": f" The {thing} is {colour}. Go away!",
        }
        for thing, colour in zip(things, COLOURS[: len(things)] if len(things) <= 8 else COLOURS)
    ]


SFT_SETTINGS = ["optim.lr=3e-3", "schedule.max_steps=24", "train.micro_batch_size=4"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, base_model_dir) -> Path:
    root = tmp_path_factory.mktemp("sft")
    data = write_json(root / "facts.json", instruction_rows())
    config = FinetuneConfig.load(None, [*QUICK, *SFT_SETTINGS])
    finetune(FinetuneJob("sft", str(base_model_dir), str(data)), config, root / "run")
    return root / "run"


def test_a_finished_run_reruns_with_other_log_settings(sft_run: Path, base_model_dir) -> None:
    lines = (sft_run / "metrics.jsonl").read_text()
    config = FinetuneConfig.load(None, [*QUICK, *SFT_SETTINGS, "log.progress=none",
                                        "checkpoint.keep_last=5"])  # fmt: skip
    job = FinetuneJob("sft", str(base_model_dir), str(sft_run.parent / "facts.json"))
    assert finetune(job, config, sft_run) == sft_run / "final"
    assert (sft_run / "metrics.jsonl").read_text() == lines


def test_sft_learns_a_tiny_set(sft_run: Path) -> None:
    records = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.35 * first, (first, last)
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "eta_s"} <= set(records[-1])


def test_run_directory_and_final_model(sft_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import elmforge  # noqa: F401  (registers OpenELM)

    assert (sft_run / "loss.png").stat().st_size > 0 and any((sft_run / "tb").iterdir())
    assert (sft_run / "checkpoints" / "step-00000024" / "manifest.json").is_file()
    final = sft_run / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "openelm" and config["share_input_output_layers"] is True
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    conversation = [
        {"role": "user", "content": "Hi  there"},
        {"role": "assistant", "content": "Yo"},
    ]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == render_chat(conversation)
    assert model.config.vocab_size >= len(tokenizer)
    # llama.cpp's converter (gguf's SpecialVocab) finds Apple's template too.
    assert gguf.SpecialVocab(final, load_merges=False).chat_template == APPLE_CHAT_TEMPLATE
    assert not (sft_run / "adapter").exists()


@pytest.mark.slow
def test_dpo_raises_the_margin_on_held_aside_pairs(tmp_path: Path, base_model_dir: Path) -> None:
    from elmforge.data.tokenizer import load_tokenizer
    from elmforge.model.convert import load_pretrained

    train = write_jsonl(tmp_path / "pairs.jsonl", style_pairs(THINGS[:6]))
    held = [PreferenceRow("h", r["prompt"], r["chosen"], r["rejected"])
            for r in style_pairs(["lake", "rose", "crow", "lime"])]  # fmt: skip
    tokenizer = load_tokenizer(base_model_dir)
    pairs, _ = encode_preferences(held, tokenizer, 128, 64)
    before = preference_margin(load_pretrained(base_model_dir), pairs, pad_id_of(tokenizer))
    config = FinetuneConfig.load(None, [*QUICK, "peft=lora", "lora.dropout=0.0", "optim.lr=5e-3",
                                        "schedule.max_steps=12", "train.micro_batch_size=6",
                                        "dpo.beta=0.5", "dpo.loss=sigmoid"])  # fmt: skip
    final = finetune(FinetuneJob("dpo", str(base_model_dir), str(train)), config, tmp_path / "run")
    after = preference_margin(load_pretrained(final), pairs, pad_id_of(tokenizer))
    assert after > before + 5.0, (before, after)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["rewards/margins"] > 0 and records[-1]["rewards/accuracies"] == 1.0
    assert {"rewards/chosen", "rewards/rejected"} <= set(records[-1])
    assert torch.isfinite(torch.tensor(records[-1]["loss"]))


@pytest.mark.slow
def test_apples_hub_layout_without_tokenizer_gets_llama2_and_the_template(
    tmp_path: Path, llama2_tokenizer_path: Path
) -> None:
    """Apple's -Instruct repos ship config.json (with an auto_map) and weights, no tokenizer."""
    from transformers import AutoTokenizer

    from elmforge.model.modeling import OpenELMForCausalLM

    hub = tmp_path / "OpenELM-tiny-Instruct"
    OpenELMForCausalLM(micro_config(vocab_size=32000)).save_pretrained(hub)
    config = json.loads((hub / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"}
    (hub / "config.json").write_text(json.dumps(config))
    chat = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", chat * 4)
    options = [*QUICK, "peft=lora", "lora.r=2", "schedule.max_steps=2", "train.micro_batch_size=2"]
    final = finetune(FinetuneJob("sft", str(hub), str(data)), FinetuneConfig.load(None, options),
                     tmp_path / "run")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert len(tokenizer) == 32000 and tokenizer("Hello world").input_ids == [1, 15043, 3186]
    messages = chat[0]["messages"]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == render_chat(messages)
