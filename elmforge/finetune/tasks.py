"""Fine-tuning's tasks on the training engine (:mod:`elmforge.train.engine`): SFT and DPO.

A task says what a batch is and how its loss and metrics are computed; the engine runs the loop,
checkpoints, resumption, logging and processes, as for pretraining.

- **Data order.** Examples in a seeded permutation per epoch (:class:`ExampleStream`); the cursor
  (epoch, position) is the whole data state. Every process reads the same stream and keeps its
  rows of each global micro-batch, so P processes x B rows read what 1 process x P*B reads, and
  the data order (and resumption) does not depend on the process count.
- **SFT** is pretraining's loss (``train.optim.loss_sums``: summed cross-entropy and z-loss over
  the trained tokens, the prompt's labels -100); the units the engine divides by are the trained
  tokens of the whole step.
- **DPO** runs each pair's chosen and rejected sequences in one forward pass and the reference's
  log-probabilities under ``no_grad`` (a frozen copy for full fine-tuning, sharded like the
  policy; the base model with the adapter switched off for PEFT, as TRL does); the units are
  pairs, the metrics TRL's rewards.
- **Trainable state.** A full fine-tuning checkpoint holds the whole model (HF layout); a PEFT
  run's holds the adapter in PEFT's format, gathered from the (possibly sharded) model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from elmforge.finetune.losses import dpo_loss, sequence_logps
from elmforge.finetune.tokenize import IGNORE_INDEX, TokenRow, collate, collate_packed
from elmforge.train import distributed as dist_utils
from elmforge.train.engine import autocast
from elmforge.train.optim import loss_sums

Batch = dict[str, Any]


# -- the data order ---------------------------------------------------------------------------------
class ExampleStream:
    """Examples in a seeded order per epoch; the cursor (epoch, position) is the whole state."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.count, generator=generator).tolist()

    def peek(self) -> int:
        """The next example, not taken."""
        if self.position == self.count:  # the same state as the next epoch's start
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        return self._order[self.position]

    def take(self, n: int) -> list[int]:
        picked = []
        for _ in range(n):
            picked.append(self.peek())
            self.position += 1
        return picked

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def _tokens(example: TokenRow | tuple[TokenRow, TokenRow]) -> int:
    if isinstance(example, tuple):
        return sum(len(seq.ids) for seq in example)
    return len(example.ids)


def make_packed_batch(rows: list[list[TokenRow]], pad_id: int) -> Batch:
    """A micro-batch of packed SFT rows (:func:`~elmforge.finetune.tokenize.collate_packed`)."""
    tokens = sum(len(e.ids) for row in rows for e in row)
    return {**collate_packed(rows, pad_id), "tokens": tokens}


def make_batch(examples: list[Any], pad_id: int) -> Batch:
    """A micro-batch of SFT rows (TokenRow) or DPO pairs ((chosen, rejected) TokenRows): the
    chosen sequences first, then the rejected ones."""
    tokens = sum(_tokens(e) for e in examples)
    if examples and isinstance(examples[0], tuple):
        batch = collate([c for c, _ in examples] + [r for _, r in examples], pad_id)
        return {**batch, "pairs": len(examples), "tokens": tokens}
    return {**collate(examples, pad_id), "tokens": tokens}


class ExampleLoader:
    """Micro-batches for this process: each takes the next ``micro_batch_size x processes``
    examples of the stream (with ``pack_length``, as many packed rows of up to that many
    tokens, each filled with the next examples that fit) and keeps this rank's share."""

    def __init__(
        self, examples: list[Any], seed: int, micro_batch_size: int, env: dist_utils.DistEnv,
        pad_id: int, pack_length: int | None = None,
    ) -> None:  # fmt: skip
        self.examples, self.micro, self.env, self.pad_id = examples, micro_batch_size, env, pad_id
        self.pack_length = pack_length
        self.stream = ExampleStream(len(examples), seed)

    def _packed_row(self) -> list[TokenRow]:
        row: list[TokenRow] = []
        used = 0
        while True:
            example = self.examples[self.stream.peek()]
            width = len(example.ids) - 1
            if row and used + width > self.pack_length:
                return row
            self.stream.take(1)
            row.append(example)
            used += width

    def __iter__(self) -> ExampleLoader:
        return self

    def __next__(self) -> Batch:
        if self.pack_length:
            rows = [self._packed_row() for _ in range(self.micro * self.env.world_size)]
            return make_packed_batch(rows[self.env.rank * self.micro :][: self.micro], self.pad_id)
        picked = self.stream.take(self.micro * self.env.world_size)
        mine = picked[self.env.rank * self.micro : (self.env.rank + 1) * self.micro]
        return make_batch([self.examples[i] for i in mine], self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)


# -- trainable state --------------------------------------------------------------------------------
def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder layers of an OpenELM model, PEFT-wrapped or not (FSDP2's units)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.transformer.layers


def adapter_names(model: Any) -> dict[str, str]:
    """PEFT's saved name (``...lora_A.weight``) -> the parameter's name in ``model``."""
    from peft import get_peft_model_state_dict

    local = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = get_peft_model_state_dict(model, state_dict=local, save_embedding_layers=False)
    by_identity = {id(t): n for n, t in local.items()}
    return {key: by_identity[id(tensor)] for key, tensor in saved.items()}


class FinetuneTask:
    """What SFT and DPO share: the model (full or PEFT), precision, state and outputs."""

    metric_names: tuple[str, ...] = ("loss",)
    global_order = True
    flops_per_token = None
    peak_flops = 0.0

    def __init__(
        self, model: Any, env: dist_utils.DistEnv, precision: str, peft: bool,
        write_final: Any, describe: Any, held_out: list | None = None, batch_size: int = 8,
        pad_id: int = 0, scorer: Any = None,
    ) -> None:  # fmt: skip
        self.env, self.precision, self.peft = env, precision, peft
        self.names = adapter_names(model) if peft else {}
        self.model = dist_utils.shard_model(model, decoder_layers(model), env)
        self._write_final, self._describe = write_final, describe
        # Every process scores every held-aside row: the same forward passes on every rank (FSDP2
        # gathers in each), no reduction, and the figures do not depend on the process count.
        self.held_out, self.batch_size, self.pad_id = held_out or [], batch_size, pad_id
        # eval.tasks (elmforge.finetune.lm_tasks.TaskScorer): model -> val_<task>_<metric>.
        self.scorer = scorer

    def describe(self, env: dist_utils.DistEnv, grad_accum: int, max_steps: int) -> str:
        return self._describe(env, grad_accum, max_steps)

    def tokens(self, batch: Batch) -> int:
        return int(batch["tokens"])

    def logits(self, model: Any, batch: Batch) -> torch.Tensor:
        # Packed rows carry their positions and block-diagonal mask.
        extra = {k: batch[k].to(self.env.device) for k in ("attention_mask", "position_ids")
                 if k in batch}  # fmt: skip
        with autocast(self.precision, self.env.device):
            ids = batch["input_ids"].to(self.env.device)
            return model(input_ids=ids, use_cache=False, **extra).logits

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """The held-out metrics (``val_*``) over every held-aside row and, with a scorer, the
        ``eval.tasks`` metrics; None without held-aside rows."""
        if not self.held_out:
            return None
        self.model.eval()
        units, sums = 0, {}
        for start in range(0, len(self.held_out), self.batch_size):
            batch = make_batch(self.held_out[start : start + self.batch_size], self.pad_id)
            _, metrics = self.loss_sums(batch)
            units += self.units(batch)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        metrics = self.held_out_metrics(sums, units)
        if self.scorer is not None:
            metrics.update(self.scorer(self.model))
        self.model.train()
        return metrics

    def held_out_metrics(self, sums: dict[str, float], units: int) -> dict[str, float]:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = dist_utils.full_model_state(self.model, trainable_only=self.peft)
        if not self.peft:
            return state
        # Real on rank 0 only (the others get an empty state).
        return {saved: state[name] for saved, name in self.names.items() if name in state}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.peft:
            state = {self.names[k]: v for k, v in state.items() if k in self.names}
        dist_utils.load_full_state(self.model, None, state, None, trainable_only=self.peft)

    def write_model(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        if self.peft:
            from elmforge.finetune.adapters import write_adapter

            write_adapter(self.model, state, directory)
        else:
            from elmforge.modeldir.save import save_model_dir

            save_model_dir(self.model.config, state, directory)

    def write_final(self) -> Path:
        return self._write_final(self)


class SFTTask(FinetuneTask):
    """Supervised fine-tuning: pretraining's loss over the completion tokens."""

    def __init__(self, *args: Any, z_loss: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.z_weight = z_loss
        self.metric_names = ("loss", "z_loss") if z_loss else ("loss",)

    def units(self, batch: Batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def held_out_metrics(self, sums: dict[str, float], units: int) -> dict[str, float]:
        loss = sums["loss"] / units
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}

    def loss_sums(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.logits(self.model, batch)
        ce_sum, z_sum = loss_sums(logits, batch["labels"].to(self.env.device))
        return ce_sum + self.z_weight * z_sum, {"loss": ce_sum.detach(), "z_loss": z_sum.detach()}


class DPOTask(FinetuneTask):
    """DPO (sigmoid or hinge) against a frozen reference."""

    metric_names = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                    "rewards/accuracies")  # fmt: skip

    def __init__(
        self, *args: Any, beta: float, loss: str, reference: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.loss = beta, loss
        self.reference = None
        if reference is not None:  # full fine-tuning: a frozen copy, sharded like the policy
            self.reference = dist_utils.shard_model(reference, decoder_layers(reference), self.env)

    def units(self, batch: Batch) -> int:
        return int(batch["pairs"])

    def held_out_metrics(self, sums: dict[str, float], pairs: int) -> dict[str, float]:
        return {
            "val_loss": sums["loss"] / pairs,
            "val_accuracy": sums["rewards/accuracies"] / pairs,
            "val_margin": sums["rewards/margins"] / pairs,
        }

    def _reference_logps(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.logits(self.reference, batch), labels)
            with self.model.disable_adapter():  # the base model is the reference (PEFT)
                return sequence_logps(self.logits(self.model, batch), labels)

    def loss_sums(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"].to(self.env.device)
        policy = sequence_logps(self.logits(self.model, batch), labels)
        reference = self._reference_logps(batch, labels)
        half = int(batch["pairs"])
        terms = dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:],
                         self.beta, self.loss)  # fmt: skip
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        total = terms.losses.sum()
        return total, {
            "loss": total.detach(),
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/margins": (chosen - rejected).sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
        }
