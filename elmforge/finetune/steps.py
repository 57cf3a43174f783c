"""One optimizer step of SFT or DPO: forward, loss, backward over the micro-batches, clip, AdamW.

Shared by the training loop (``trainer``) and ``bench/finetune.py``, so the benchmark times the
step the runs take. Batches are right-padded without an attention mask (``tokenize.collate``).
SFT's loss is the step's summed cross-entropy (+ z-loss) over its trained tokens divided by their
count; DPO's is the mean over the step's pairs, each pair's chosen and rejected sequences in one
forward pass and the reference's log-probabilities under ``no_grad`` (a frozen copy for full
fine-tuning, the base model with the adapter switched off for PEFT, as TRL does).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from elmforge.errors import ElmforgeError
from elmforge.finetune.losses import dpo_loss, reward_metrics, sequence_logps
from elmforge.finetune.tokenize import IGNORE_INDEX, TokenRow, collate
from elmforge.train.optim import loss_sums


class Stepper:
    def __init__(
        self,
        objective: str,
        model: Any,
        optimizer: torch.optim.Optimizer,
        config: Any,
        device: torch.device,
        precision: str,
        pad_id: int,
        reference: Any = None,
    ) -> None:
        self.objective, self.model, self.optimizer = objective, model, optimizer
        self.config, self.device, self.precision = config, device, precision
        self.pad_id, self.reference = pad_id, reference
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            return model(input_ids=batch["input_ids"].to(self.device), use_cache=False).logits

    def _reference_logps(
        self, batch: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self._logits(self.reference, batch), labels)
            with self.model.disable_adapter():  # the base model is the reference (PEFT)
                return sequence_logps(self._logits(self.model, batch), labels)

    def _sft(self, micro_batches: list[list[TokenRow]]) -> dict[str, float]:
        batches = [collate(rows, self.pad_id) for rows in micro_batches]
        targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        z_weight = self.config.optim.z_loss
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in batches:
            logits = self._logits(self.model, batch)
            ce_sum, z_sum = loss_sums(logits, batch["labels"].to(self.device))
            ((ce_sum + z_weight * z_sum) / targets).backward()
            totals += torch.stack([ce_sum.detach().double().cpu(), z_sum.detach().double().cpu()])
        record = {"loss": float(totals[0] / targets)}
        if z_weight:
            record["z_loss"] = float(totals[1] / targets)
        return record

    def _dpo(self, micro_batches: list[list[tuple[TokenRow, TokenRow]]]) -> dict[str, float]:
        pairs_in_step = sum(len(rows) for rows in micro_batches)
        dpo = self.config.dpo
        sums: dict[str, float] = {}
        for rows in micro_batches:
            batch = collate([c for c, _ in rows] + [r for _, r in rows], self.pad_id)
            labels = batch["labels"].to(self.device)
            policy = sequence_logps(self._logits(self.model, batch), labels)
            reference = self._reference_logps(batch, labels)
            half = len(rows)
            terms = dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:],
                             dpo.beta, dpo.loss)  # fmt: skip
            (terms.losses.sum() / pairs_in_step).backward()
            metrics = {"loss": float(terms.losses.detach().mean()), **reward_metrics(terms)}
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * half / pairs_in_step
        return sums

    def step(self, micro_batches: list[list[Any]], step: int = 0) -> tuple[dict[str, float], int]:
        """One optimizer step; returns its metrics and the (non-padding) tokens it read."""
        record = (self._sft if self.objective == "sft" else self._dpo)(micro_batches)
        tokens = sum(_tokens(example) for rows in micro_batches for example in rows)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if not (math.isfinite(record["loss"]) and math.isfinite(grad_norm)):
            raise ElmforgeError(
                f"step {step + 1}: non-finite loss or gradient (loss {record['loss']}, grad norm "
                f"{grad_norm}); lower --optim.lr (the last checkpoint is kept)"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        record["grad_norm"] = grad_norm
        return record, tokens


def _tokens(example: TokenRow | tuple[TokenRow, TokenRow]) -> int:
    if isinstance(example, tuple):
        return sum(len(seq.ids) for seq in example)
    return len(example.ids)
