"""The optimisation recipe: parameter groups, warm-up + cosine, the loss with z-loss."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from elmforge import OpenELMForCausalLM
from elmforge.train.config import OptimSection, ScheduleSection
from elmforge.train.optim import WarmupCosineSchedule, build_optimizer, loss_sums, parameter_groups
from tests.shapes import micro_config


def test_weight_decay_on_matrices_and_embedding_not_on_norms() -> None:
    model = OpenELMForCausalLM(micro_config())
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = parameter_groups(model, 0.1)
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.token_embeddings.weight" in decayed  # tied with the head: once
    assert all("norm" in n for n in not_decayed) and not any("norm" in n for n in decayed)
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))
    optimizer = build_optimizer(model, OptimSection(), lr=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-8


def test_schedule_warms_up_from_init_lr_and_ends_at_min_lr() -> None:
    schedule = WarmupCosineSchedule.from_config(
        OptimSection(lr=5.3e-3), ScheduleSection(warmup_steps=5000, max_steps=350000)
    )
    assert schedule.lr(0) == pytest.approx(1e-6)
    assert schedule.lr(2500) == pytest.approx(1e-6 + (5.3e-3 - 1e-6) / 2)
    assert schedule.lr(5000) == pytest.approx(5.3e-3)
    assert schedule.lr(350000) == pytest.approx(5.3e-4)
    middle = 5000 + (350000 - 5000) // 2
    assert schedule.lr(middle) == pytest.approx((5.3e-3 + 5.3e-4) / 2)
    after = [schedule.lr(s) for s in range(5000, 350001, 5000)]
    assert all(a >= b for a, b in itertools.pairwise(after))


def test_loss_sums_match_cross_entropy_and_z_loss_over_targets_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 3
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 3:] = -100
    ce_sum, z_sum = loss_sums(logits, labels)
    targets = labels != -100
    expected_ce = F.cross_entropy(logits[targets], labels[targets], reduction="sum")
    log_z = torch.logsumexp(logits[targets], dim=-1)
    assert ce_sum.item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert z_sum.item() == pytest.approx((log_z**2).sum().item(), rel=1e-6)
    # The z-loss of a batch: 1e-4 * mean(logsumexp^2) over the 8 target tokens.
    assert 1e-4 * z_sum.item() / 8 == pytest.approx(1e-4 * (log_z**2).mean().item(), rel=1e-6)
    assert math.isfinite(ce_sum.item())
