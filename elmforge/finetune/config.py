"""The fine-tuning run config: typed sections, YAML (packaged: ``elmforge/configs/finetune/``) and dotted overrides.

Built with the config kit (:mod:`elmforge.config`), like pretraining's, and on pretraining's
sections: ``optim`` and ``checkpoint`` are pretraining's own with fine-tuning defaults;
``schedule``, ``train`` and ``log`` extend pretraining's (``StepSection``, ``LogBase``) with what
fine-tuning adds (``auto`` step counts, ``epochs``), so a shared key has one definition and one
``--help``.
Every field's docstring is its ``--help``. Light on purpose (no torch): the CLI builds its flags
from this schema.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from elmforge import config as kit
from elmforge.errors import ConfigError
from elmforge.train.config import (
    CheckpointSection,
    LogBase,
    ModelMemory,
    OptimSection,
    ScheduleSection,
    StepSection,
)

# CoreNet's LoRA/DoRA targets (projects/openelm/peft_configs): the token embedding and the four
# projections of every layer.
DEFAULT_TARGETS = ("token_embeddings", "qkv_proj", "out_proj", "proj_1", "proj_2")
OBJECTIVES = ("sft", "dpo")
_POSITIVE = (lambda v: v > 0, "positive")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
# Dotted key -> (rule, what the rule asks), checked on every config ("auto" values skip it).
RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    **dict.fromkeys(
        ["optim.lr", "lora.r", "lora.alpha", "dpo.beta", "train.epochs",
         "train.micro_batch_size", "train.grad_accum", "checkpoint.save_every", "log.log_every",
         "train.max_nonfinite_steps",
         "data.max_length", "data.max_prompt_length", "schedule.max_steps"],
        _POSITIVE,
    ),
    **dict.fromkeys(
        ["optim.weight_decay", "optim.eps", "optim.grad_clip", "optim.z_loss",
         "schedule.warmup_steps", "schedule.warmup_init_lr", "checkpoint.keep_last",
         "train.num_threads", "seed"],
        _NON_NEGATIVE,
    ),
    **dict.fromkeys(
        ["optim.beta1", "optim.beta2", "lora.dropout", "schedule.warmup_ratio"], _FRACTION
    ),
    "schedule.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}  # fmt: skip


@dataclass
class FinetuneData:
    max_length: int = 1024
    """Tokens per sequence (bos, prompt and completion); longer rows are cut: the prompt kept
    from its start, the completion cut at the end."""
    max_prompt_length: int = 512
    """Prompt tokens kept (from the start) when a row is cut; must be below max_length."""
    prompt_style: Literal["alpaca", "llm-adapters", "chat"] = "alpaca"
    """How instruction/input/output rows become text: ``alpaca`` (clean template),
    ``llm-adapters`` (LLM-Adapters' training prompt, byte for byte), ``chat`` (Apple's chat
    template, the instruction as the user turn)."""
    split: str = "train"
    """Split of an ``hf:org/name`` dataset."""
    packing: bool = False
    """SFT only: pack several examples into each sequence of up to ``max_length`` tokens
    (positions restart per example, attention stays inside each example), so a batch carries no
    padding but the last sequence's tail."""


@dataclass
class LoraSection:
    r: int = 32
    """Adapter rank (CoreNet: 32)."""
    alpha: float = 32.0
    """LoRA alpha; the update is scaled by alpha / r (CoreNet: 32)."""
    dropout: float = 0.1
    """Dropout on the adapter's input (CoreNet: 0.1)."""
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    """Layers that get adapters (CoreNet: token_embeddings, qkv_proj, out_proj, proj_1,
    proj_2); on the command line a comma-separated list."""


@dataclass
class DPOSection:
    loss: Literal["sigmoid", "hinge"] = "sigmoid"
    """DPO loss: ``sigmoid`` (-log sigmoid(beta x margin)) or ``hinge`` (max(0, 1 - beta x
    margin)); Apple used hinge for 270M, 450M and 3B, sigmoid for 1.1B."""
    beta: float = 0.01
    """Strength of the pull towards the reference model (Apple: 0.01)."""


@dataclass
class FinetuneSchedule(ScheduleSection):
    """Pretraining's schedule with step counts that may follow from the data."""

    warmup_steps: int | Literal["auto"] = "auto"
    """Linear warm-up steps from ``warmup_init_lr``. ``auto``: warmup_ratio x max_steps."""
    max_steps: int | Literal["auto"] = "auto"
    """Optimizer steps in the run. ``auto``: train.epochs passes over the data."""
    warmup_init_lr: float = 0.0
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.1
    """Share of the steps spent warming up when warmup_steps is auto (Apple's DPO: 0.1)."""


@dataclass
class FinetuneTrain(StepSection):
    """Pretraining's step settings (precision, device, non-finite steps, threads) with
    fine-tuning's batch, plus ``epochs``."""

    micro_batch_size: int = 8
    """Rows per process per forward/backward pass (DPO: pairs, so twice as many sequences)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    epochs: int = 1
    """Passes over the data (sets max_steps when that is auto)."""


@dataclass
class FinetuneOptim(OptimSection):
    """Pretraining's optimiser section with fine-tuning's defaults (TRL's AdamW: no weight
    decay, beta2 0.999; no z-loss)."""

    lr: float = 2e-5
    weight_decay: float = 0.0
    beta2: float = 0.999
    z_loss: float = 0.0


@dataclass
class FinetuneCheckpoint(CheckpointSection):
    save_every: int = 200
    keep_last: int = 2


@dataclass
class FinetuneLog(LogBase):
    """Pretraining's metrics and progress settings."""


# The held-out metrics each objective reports, and whether lower is better.
EVAL_METRICS = {"val_loss": "min", "val_ppl": "min", "val_accuracy": "max", "val_margin": "max"}


def task_of_metric(name: str, section: EvalSection) -> tuple[str, str] | None:
    """(task, metric) of an ``eval.tasks`` metric name ``val_<task>_<metric>``, the longest task
    of ``section.tasks`` that fits (task names hold underscores too), or None."""
    fits = [t for t in section.tasks if name.startswith(f"val_{t}_") and len(name) > len(t) + 5]
    if not fits:
        return None
    task = max(fits, key=len)
    return task, name[len(task) + 5 :]


@dataclass
class EvalSection:
    every: int = 0
    """Score the held-aside rows every N steps and at the end (0: never): validation loss (SFT);
    loss, preference accuracy and reward margin (DPO), written to metrics.jsonl as ``val_*``;
    with ``eval.tasks``, lm-eval tasks too."""
    data: str | None = None
    """Held-aside rows (a file, directory or ``hf:`` name like ``--data``); unset: the
    ``holdout`` share of the training rows, drawn with the seed and never trained on."""
    holdout: float = 0.05
    """Share of the training rows held aside when ``eval.data`` is unset (at least one row)."""
    tasks: list[str] = field(default_factory=list)
    """lm-eval tasks or groups (comma-separated) also scored at every evaluation through the
    evaluation harness, on the model in memory; written as ``val_<task>_<metric>`` (e.g.
    ``val_arc_easy_acc_norm``). Needs ``eval.every``."""
    limit: int | None = 50
    """Documents scored per ``eval.tasks`` task at each evaluation (null: all of them)."""
    data_dir: str | None = None
    """Offline data of ``eval.tasks``: ``DIR/<dataset>/<split>.jsonl`` as for ``elmforge
    evaluate --data-dir`` (unset: the Hugging Face hub or its local cache)."""
    keep_best: str | None = None
    """Keep the checkpoint with the best value of this metric as ``checkpoints/best``:
    val_loss or val_ppl (lower is better), val_accuracy or val_margin (higher), or an
    ``eval.tasks`` metric such as val_arc_easy_acc (lm-eval says which way is better); needs
    ``eval.every``."""


@dataclass
class FinetuneConfig:
    """One fine-tuning run; the top-level keys of a fine-tuning YAML file."""

    peft: Literal["none", "lora", "dora"] = "none"
    """``none``: full fine-tuning; ``lora`` or ``dora``: train a PEFT adapter only."""
    model: ModelMemory = field(default_factory=ModelMemory)
    """How the trained model spends memory (pretraining's ``model.activation_checkpointing``)."""
    lora: LoraSection = field(default_factory=LoraSection)
    """Adapter shape (with peft lora or dora)."""
    dpo: DPOSection = field(default_factory=DPOSection)
    """DPO's loss (``finetune dpo`` only)."""
    data: FinetuneData = field(default_factory=FinetuneData)
    """Lengths and prompt rendering."""
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    """AdamW (weight decay never on norms or biases) and, for SFT, the z-loss weight."""
    schedule: FinetuneSchedule = field(default_factory=FinetuneSchedule)
    """Warm-up + cosine learning-rate schedule."""
    train: FinetuneTrain = field(default_factory=FinetuneTrain)
    """Epochs, batch, precision, device."""
    checkpoint: FinetuneCheckpoint = field(default_factory=FinetuneCheckpoint)
    """Checkpoint frequency and retention."""
    log: FinetuneLog = field(default_factory=FinetuneLog)
    """Metrics and progress."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Evaluation on held-aside rows while training."""
    seed: int = 0
    """Seed of the data order, adapter initialisation and dropout."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> FinetuneConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
        return kit.build(cls, d, source=source)

    @classmethod
    def load(cls, path: str | Path | None, overrides: typing.Sequence[str] = ()) -> FinetuneConfig:
        """A YAML file (or the defaults when ``path`` is None) with ``key=value`` overrides."""
        return kit.load(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        return kit.to_dict(self)

    def to_yaml(self) -> str:
        return kit.to_yaml(self)

    def validate(self, where: str = "") -> None:
        """The value rules of ``RULES`` and the rules across fields (the kit checked types)."""
        for key, (ok, what) in RULES.items():
            value = self
            for part in key.split("."):
                value = getattr(value, part)
            if value != "auto" and not ok(value):
                raise ConfigError(f"{key}: must be {what}, got {value!r}")
        if self.data.max_prompt_length >= self.data.max_length:
            raise ConfigError(
                f"data.max_prompt_length: {self.data.max_prompt_length} must be below "
                f"data.max_length={self.data.max_length}"
            )
        if not self.lora.targets:
            raise ConfigError("lora.targets: no target modules given")
        if not 0 < self.eval.holdout < 1:
            raise ConfigError(f"eval.holdout: must be in (0, 1), got {self.eval.holdout!r}")
        if self.eval.every < 0:
            raise ConfigError(f"eval.every: must be >= 0, got {self.eval.every!r}")
        for key in ("keep_best", "tasks"):
            if getattr(self.eval, key) and not self.eval.every:
                raise ConfigError(f"eval.{key}: needs eval.every (nothing is ever scored)")
        if self.eval.limit is not None and self.eval.limit < 1:
            raise ConfigError(f"eval.limit: must be positive, got {self.eval.limit!r}")
        keep = self.eval.keep_best
        if keep is not None and keep not in EVAL_METRICS and not task_of_metric(keep, self.eval):
            raise ConfigError(
                f"eval.keep_best: {keep!r} is none of {', '.join(EVAL_METRICS)} nor "
                "val_<task>_<metric> of a task in eval.tasks"
            )

    # -- derived values ------------------------------------------------------------------------
    def steps_for(self, rows: int, processes: int = 1) -> tuple[int, int]:
        """(max_steps, warmup_steps) for a data set of ``rows`` rows (examples or pairs) read by
        ``processes`` processes (each step reads micro_batch_size x grad_accum x processes)."""
        per_step = self.train.micro_batch_size * self.train.grad_accum * processes
        max_steps = self.schedule.max_steps
        if max_steps == "auto":
            max_steps = max(1, math.ceil(rows / per_step) * self.train.epochs)
        warmup = self.schedule.warmup_steps
        if warmup == "auto":
            warmup = int(self.schedule.warmup_ratio * max_steps)
        if warmup > max_steps:
            raise ConfigError(
                f"schedule.warmup_steps: {warmup} exceeds the run's {max_steps} steps"
            )
        return max_steps, warmup


def documented_keys() -> dict[str, str]:
    """Every dotted leaf key of the fine-tuning config with its documentation (``--help``)."""
    return kit.documented_keys(FinetuneConfig)
