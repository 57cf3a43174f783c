"""Activation checkpointing in fine-tuning: the same gradients as without it (full and LoRA with
dropout on: the recomputed forward replays the RNG), and gradient accumulation over micro-batches
equals one bigger micro-batch. Tolerance: relative 1e-5 (fp32 on CPU; recomputation runs the
same kernels, so the gradients agree to a few ulps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elmforge.finetune import adapters
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.tasks import SFTTask, make_batch
from elmforge.finetune.tokenize import TokenRow
from elmforge.model.modeling import OpenELMForCausalLM
from elmforge.train.distributed import DistEnv
from elmforge.train.engine import Engine, enable_activation_checkpointing
from elmforge.train.optim import WarmupCosineSchedule
from tests.shapes import micro_config

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _rows(count: int, length: int = 20) -> list[TokenRow]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(count):
        ids = torch.randint(3, 256, (length,), generator=generator).tolist()
        rows.append(TokenRow(ids, [False] * 6 + [True] * (length - 6)))
    return rows


def _gradients(peft: str, checkpointing: bool, batches: list[list[TokenRow]]) -> dict:
    torch.manual_seed(0)
    model = OpenELMForCausalLM(micro_config(vocab_size=256))
    if checkpointing:
        enable_activation_checkpointing(model, reentrant=False)
    if peft != "none":
        spec = adapters.lora_config(peft, 4, 8, 0.1, ["qkv_proj", "out_proj", "proj_1", "proj_2"])
        model = adapters.add_adapter(model, spec)
    model.train()
    task = SFTTask(model, ENV, "fp32", peft != "none", write_final=None, describe=None)
    config = FinetuneConfig.load(None, [])
    engine = Engine(config, Path("."), ENV, task, None, WarmupCosineSchedule(1e-3, 0, 0, 10, 0),
                    len(batches), "")  # fmt: skip
    torch.manual_seed(7)  # dropout draws
    engine.gradients([make_batch(rows, 0) for rows in batches])
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_activation_checkpointing_gives_the_same_gradients(peft: str) -> None:
    batches = [_rows(3)]
    plain, checkpointed = _gradients(peft, False, batches), _gradients(peft, True, batches)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_accumulation_equals_one_bigger_micro_batch() -> None:
    rows = _rows(4)
    # Equal lengths: right padding then changes nothing, so the sums are over the same tokens.
    whole = _gradients("none", False, [rows])
    accumulated = _gradients("none", False, [rows[:2], rows[2:]])
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-5, atol=1e-7, msg=name)
