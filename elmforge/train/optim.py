"""The paper's optimisation recipe: AdamW parameter groups, warm-up + cosine, z-loss.

Written here rather than taken from a library because each piece is a few lines whose exact
definition matters for reproducing CoreNet (warm-up from ``warmup_init_lr``, the min-LR floor,
z-loss over target tokens only) and for bit-exact resumption (the LR is a pure function of step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from elmforge.data.config import IGNORE_INDEX
from elmforge.train.config import OptimSection, ScheduleSection


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices and the embedding decay; norms and biases (1-D) do not.

    That is CoreNet's ``no_decay_bn_filter_bias`` rule (docs/openelm.md, "Pretraining recipe":
    weight decay 0.1, not applied to norms or biases); the tied embedding is one parameter and
    decays once.
    """
    decay, no_decay = [], []
    for _name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(model: nn.Module, optim: OptimSection, lr: float) -> torch.optim.AdamW:
    """AdamW with the paper's betas/eps over :func:`parameter_groups`, starting at ``lr``."""
    return torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay),
        lr=lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warm-up from ``warmup_init_lr`` to ``max_lr``, then cosine down to ``min_lr``.

    CoreNet's ``cosine`` scheduler with ``is_iteration_based``: at step ``s`` (0-based, the step
    about to be taken) during warm-up ``init + (max - init) * s / warmup``; afterwards
    ``min + (max - min) * (1 + cos(pi * (s - warmup) / (max_steps - warmup))) / 2``, reaching
    ``min`` exactly at ``max_steps`` (CoreNet divides by ``max_steps - warmup + 1``, a relative
    difference of 1/345k in the period for the paper's configs).
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    warmup_init_lr: float

    @classmethod
    def from_config(cls, optim: OptimSection, schedule: ScheduleSection) -> WarmupCosineSchedule:
        return cls(
            max_lr=optim.lr,
            min_lr=optim.lr * schedule.min_lr_ratio,
            warmup_steps=schedule.warmup_steps,
            max_steps=schedule.max_steps,
            warmup_init_lr=schedule.warmup_init_lr,
        )

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return (
                self.warmup_init_lr + (self.max_lr - self.warmup_init_lr) * step / self.warmup_steps
            )
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.max_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over target tokens of the cross-entropy and of logsumexp(logits)^2.

    ``logits`` (B, S, V) predict ``labels`` (B, S) position by position (no shift here: the data
    pipeline's labels are already the next tokens); label -100 is ignored. Returning sums lets the
    caller divide by the token count of the whole optimizer step over every micro-batch and
    process, so 2 processes x B sequences give the same gradient as 1 process x 2B.
    The z-loss (PaLM, CoreNet) is ``z_weight * mean(logsumexp(logits)^2)`` over the same tokens.
    """
    logits = logits.float().reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    target = (labels != IGNORE_INDEX).to(logits.dtype)
    # One logsumexp serves both terms (cross-entropy = log Z - target logit): for a 32k vocabulary
    # that is most of the loss's cost.
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    ce_sum = ((log_z - target_logit) * target).sum()
    return ce_sum, (log_z * log_z * target).sum()
