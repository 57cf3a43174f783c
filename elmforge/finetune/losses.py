"""The fine-tuning losses: masked cross-entropy (SFT) and DPO's sigmoid and hinge losses.

SFT uses the pretraining loss as it is (``elmforge.train.optim.loss_sums``: summed cross-entropy
and z-loss over the trained tokens, divided by the step's trained-token count), with the prompt
tokens' labels set to -100.

DPO (Rafailov et al. 2023) compares the policy's and the frozen reference's log-probabilities of
the chosen and rejected completions (summed over completion tokens). With
``delta = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``:

- sigmoid: ``-log sigmoid(beta * delta)`` (the paper's loss);
- hinge:   ``max(0, 1 - beta * delta)`` (SLiC; Apple's choice for three of the four sizes).

The implicit rewards are ``beta * (log pi - log ref)``; ``rewards/margins`` is chosen minus
rejected and ``rewards/accuracies`` the share of pairs whose chosen reward is higher. These are
TRL 1.16's definitions (``DPOTrainer._compute_loss``); the tests check equality with TRL's trainer
on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from elmforge.train.optim import IGNORE_INDEX

DPO_LOSSES = ("sigmoid", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the labelled tokens (labels already shifted)."""
    logits = logits.float()
    mask = labels != IGNORE_INDEX
    target = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = target - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(dim=-1)


@dataclass
class DPOTerms:
    losses: torch.Tensor
    """Per pair."""
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> DPOTerms:
    """Per-pair DPO losses and implicit rewards from summed sequence log-probabilities."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r} (expected one of {DPO_LOSSES})")
    return DPOTerms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def reward_metrics(terms: DPOTerms) -> dict[str, float]:
    """Batch means of TRL's reward metrics."""
    chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
    return {
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margins": float((chosen - rejected).mean()),
        "rewards/accuracies": float((chosen > rejected).float().mean()),
    }


@torch.no_grad()
def preference_margin(
    model: torch.nn.Module, pairs: list, pad_id: int, batch_size: int = 8
) -> float:
    """Mean of log p(chosen) - log p(rejected) over encoded pairs (``tokenize.encode_preferences``):
    how much more likely the model finds the preferred completion, in nats."""
    from elmforge.finetune.tokenize import collate

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    margins = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate([c for c, _ in chunk] + [r for _, r in chunk], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device), use_cache=False).logits
        logps = sequence_logps(logits, batch["labels"].to(device))
        margins.append(logps[: len(chunk)] - logps[len(chunk) :])
    model.train(was_training)
    return float(torch.cat(margins).mean())
