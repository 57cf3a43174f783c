"""The pretraining run config: the YAML schema of ``elmforge pretrain``, as typed sections.

Every field's docstring (the string literal after it) is its documentation and its ``--help``.
Built, validated and overridden by the config kit (:mod:`elmforge.config`): an unknown key or a
bad value raises :class:`~elmforge.errors.ConfigError` naming the dotted key.

Three ways in: ``RunConfig.from_yaml(path, overrides)`` for elmforge's YAML (``elmforge/configs/*.yaml``),
``RunConfig.from_dict(d)`` for a mapping of the same shape, ``RunConfig.from_corenet_yaml(path,
overrides)`` for CoreNet's OpenELM YAML (:mod:`elmforge.train.corenet_config`).
"""

from __future__ import annotations

import copy
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from elmforge import config as kit
from elmforge.data.config import DataConfig
from elmforge.errors import ConfigError


@dataclass
class ModelMemory:
    """How a trained model spends memory (pretraining and fine-tuning)."""

    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (memory for compute)."""


@dataclass
class ModelSection(ModelMemory):
    name: str = "OpenELM-tiny"
    """A preset of ``OpenELMConfig.from_name`` (OpenELM-270M, -450M, -1_1B, -3B, -tiny)."""
    shape: dict[str, Any] = field(default_factory=dict)
    """``OpenELMConfig`` fields overriding the preset (e.g. ``num_transformer_layers: 6``)."""
    vocab_size: int | Literal["auto"] = "auto"
    """Embedding rows. ``auto``: the tokenizer's size rounded up to a multiple of 64 (32000 for
    LLaMA-2)."""
    compile: bool = False
    """Run the model through ``torch.compile``."""


@dataclass
class OptimSection:
    lr: float = 5.3e-3
    """Peak learning rate (reached at the end of warm-up)."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay; applied to matrices and the embedding, never to norms or
    biases (CoreNet's ``no_decay_bn_filter_bias``)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient L2 norm to this value (0 disables clipping)."""
    z_loss: float = 1e-4
    """Weight of the z-loss, mean of logsumexp(logits)^2 over target tokens (PaLM/CoreNet)."""


@dataclass
class ScheduleSection:
    warmup_steps: int = 5000
    """Linear warm-up steps from ``warmup_init_lr`` to ``optim.lr``."""
    max_steps: int = 350000
    """Optimizer steps in the whole run (the cosine ends here)."""
    warmup_init_lr: float = 1e-6
    """Learning rate at step 0."""
    min_lr_ratio: float = 0.1
    """Learning rate at ``max_steps`` as a fraction of ``optim.lr``."""


@dataclass
class StepSection:
    """What every training run (pretraining, fine-tuning) says about its steps: batch,
    precision, device, non-finite steps, threads."""

    micro_batch_size: int = 16
    """Sequences per process per forward/backward pass."""
    grad_accum: int | Literal["auto"] = "auto"
    """Micro-batches accumulated per optimizer step. ``auto``: from ``global_batch_tokens`` (1 if
    that is unset)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``bf16``: bfloat16 autocast (fp32 master weights and optimizer state); ``fp32``; ``auto``:
    bf16 on GPUs that support it, fp32 on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train. ``auto``: CUDA if available."""
    max_nonfinite_steps: int = 5
    """Stop (after saving a checkpoint) when this many steps in a row had a non-finite loss or
    gradient; each such step is skipped and counted."""
    num_threads: int = 0
    """CPU threads for PyTorch (0: leave PyTorch's default)."""


@dataclass
class TrainSection(StepSection):
    global_batch_tokens: int | None = None
    """Tokens per optimizer step over all processes; sets ``grad_accum`` to
    global_batch_tokens / (micro_batch_size x processes x seq_len), which must divide exactly."""
    num_workers: int = 0
    """Data loader worker processes per training process."""
    data_sharding: Literal["by_rank", "global_batch"] = "by_rank"
    """``by_rank``: each process reads its own share of the shards (scales to many processes).
    ``global_batch``: every process reads the same stream of global batches and keeps its rows,
    so the data order (and resumption) does not depend on the number of processes."""


@dataclass
class CheckpointSection:
    save_every: int = 5000
    """Save a checkpoint (HF model + full training state) every this many steps, and at the end."""
    keep_last: int = 5
    """Keep this many most recent checkpoints (0 keeps all)."""


@dataclass
class LogBase:
    """What every training run writes as it goes (pretraining and fine-tuning)."""

    log_every: int = 10
    """Write a metrics line (metrics.jsonl, TensorBoard, progress, loss.png) every N steps."""
    tensorboard: bool = True
    """Write TensorBoard event files under ``tb/``."""
    plot: bool = True
    """Refresh ``loss.png`` at each log line, each validation and at the end."""
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    """``auto``: a tqdm bar in a terminal, plain lines when not a TTY or when ``CI`` is set."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = field(
        default_factory=lambda: ["tensorboard"]
    )
    """Experiment trackers that get the resolved config, every metrics line and the final
    model's path (comma-separated on the command line): ``tensorboard`` (``tb/``, also needs
    ``log.tensorboard``), ``wandb`` (offline unless ``WANDB_MODE`` says otherwise; files under
    the run's ``wandb/``; ``pip install 'elmforge[wandb]'``), ``mlflow`` (``MLFLOW_TRACKING_URI``,
    else a file store in the run's ``mlruns/``; ``pip install 'elmforge[mlflow]'``)."""


@dataclass
class LogSection(LogBase):
    eval_every: int = 0
    """Validation loss on the held-out split every N steps and at the end (0: only at the end)."""
    eval_batches: int = 8
    """Micro-batches per validation (0 disables validation)."""
    eval_split: str = "validation"
    """The data split used for validation."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for the MFU estimate. Unset: a table of GPUs (bf16 dense); on CPU
    the widest unit /proc/cpuinfo lists for the precision (fp32: AVX-512 64, AVX2 32 FLOP/cycle;
    bf16: AMX 1024, AVX512-BF16 128) x an assumed 2.5 GHz x threads (indicative only)."""


@dataclass
class RunConfig:
    """A whole pretraining run; the top-level keys of the YAML file."""

    model: ModelSection = field(default_factory=ModelSection)
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data pipeline's section (``elmforge.data.config.DataConfig``): sources, tokenizer,
    seq_len, filters, packing; ``data.seed`` defaults to ``seed``."""
    optim: OptimSection = field(default_factory=OptimSection)
    """AdamW and the loss."""
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    """Warm-up + cosine learning-rate schedule."""
    train: TrainSection = field(default_factory=TrainSection)
    """Batch, precision, device."""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    """Checkpoint frequency and retention."""
    log: LogSection = field(default_factory=LogSection)
    """Metrics, validation, progress."""
    seed: int = 0
    """Seed of the model initialisation, the data order and every RNG."""

    # -- construction ----------------------------------------------------------------------------
    @staticmethod
    def _data_seed_defaults_to_seed(raw: dict[str, Any]) -> dict[str, Any]:
        data, seed = raw.get("data"), raw.get("seed", 0)
        if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            return raw  # a bad seed is reported as `seed`, not as `data.seed`
        if isinstance(data, dict) and "seed" not in data:
            return {**raw, "data": {**data, "seed": seed}}
        if data is None:
            return {**raw, "data": {"seed": seed}}
        return raw

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Build and validate; an unknown key or a bad value raises ConfigError naming it."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"{source}: expected a mapping at the top level, got {type(d).__name__}"
            )
        return kit.build(cls, cls._data_seed_defaults_to_seed(d), source=source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
        """Read an elmforge YAML run config, then apply ``key.path=value`` overrides."""
        return kit.load(cls, path, overrides, prepare=cls._data_seed_defaults_to_seed)

    @classmethod
    def from_corenet_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
        """Read one of CoreNet's OpenELM YAML files (``projects/openelm/pretraining_configs``)."""
        from elmforge.train.corenet_config import check_corenet_sources, corenet_to_run_dict

        raw = corenet_to_run_dict(kit.read_yaml(path), str(path))
        # The sources left empty in CoreNet's files are usually set by an override: checked after.
        check_corenet_sources(kit.apply_overrides(copy.deepcopy(raw), overrides), str(path))
        # The overrides go to kit.load, which blames an error they alone cause on the command
        # line, not on the file.
        return kit.load(cls, path, overrides, raw=raw, prepare=cls._data_seed_defaults_to_seed)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: typing.Sequence[str] = (),
        *,
        corenet: str | Path | None = None,
    ) -> RunConfig:
        """``elmforge pretrain``'s config: an elmforge YAML (a file or a packaged name) or, with
        ``corenet``, one of CoreNet's OpenELM YAML files, then the overrides. An empty elmforge
        file with no overrides is refused: all defaults is not a run anyone means (the default
        seq_len exceeds the default model's context)."""
        if corenet is not None:
            return cls.from_corenet_yaml(corenet, overrides)
        if path is None:
            raise ConfigError("give a run config (--config) or a CoreNet config (--corenet-config)")
        if not overrides and not kit.read_yaml(path):
            raise ConfigError(
                f"{path}: the config file is empty (a run config sets at least model and "
                "data; see configs/tiny-cpu.yaml)"
            )
        return cls.from_yaml(path, overrides)

    def to_dict(self) -> dict[str, Any]:
        return kit.to_dict(self)

    def to_yaml(self) -> str:
        return kit.to_yaml(self)

    # -- cross-field checks ------------------------------------------------------------------------
    def validate(self, where: str = "") -> None:
        """Rules across fields (the kit has checked each field's type)."""

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{key}: {message}")

        from elmforge.model.config import OpenELMConfig

        if self.model.name.lower() not in {n.lower() for n in OpenELMConfig.preset_names()}:
            fail("model.name", f"unknown preset {self.model.name!r} (presets: "
                 f"{', '.join(OpenELMConfig.preset_names())})")  # fmt: skip
        known_shape = shape_keys()
        for key in self.model.shape:
            if key not in known_shape:
                fail(f"model.shape.{key}", f"unknown OpenELMConfig field (known: "
                     f"{', '.join(sorted(known_shape))})")  # fmt: skip
        try:
            OpenELMConfig.from_name(self.model.name, **self.model.shape)
        except (ConfigError, TypeError, ValueError) as err:
            fail("model.shape", str(err))
        positive = {
            "optim.lr": self.optim.lr,
            "schedule.max_steps": self.schedule.max_steps,
            "train.micro_batch_size": self.train.micro_batch_size,
            "checkpoint.save_every": self.checkpoint.save_every,
            "log.log_every": self.log.log_every,
            "train.max_nonfinite_steps": self.train.max_nonfinite_steps,
        }
        if isinstance(self.model.vocab_size, int):
            positive["model.vocab_size"] = self.model.vocab_size
        if isinstance(self.train.grad_accum, int):
            positive["train.grad_accum"] = self.train.grad_accum
        if self.train.global_batch_tokens is not None:
            positive["train.global_batch_tokens"] = self.train.global_batch_tokens
        for key, value in positive.items():
            if not value > 0:
                fail(key, f"must be positive, got {value!r}")
        non_negative = {
            "optim.weight_decay": self.optim.weight_decay,
            "optim.eps": self.optim.eps,
            "optim.grad_clip": self.optim.grad_clip,
            "optim.z_loss": self.optim.z_loss,
            "schedule.warmup_steps": self.schedule.warmup_steps,
            "schedule.warmup_init_lr": self.schedule.warmup_init_lr,
            "schedule.min_lr_ratio": self.schedule.min_lr_ratio,
            "checkpoint.keep_last": self.checkpoint.keep_last,
            "log.eval_every": self.log.eval_every,
            "log.eval_batches": self.log.eval_batches,
            "train.num_workers": self.train.num_workers,
            "train.num_threads": self.train.num_threads,
            "seed": self.seed,
        }
        for key, value in non_negative.items():
            if not value >= 0:
                fail(key, f"must be >= 0, got {value!r}")
        for key, value in (("optim.beta1", self.optim.beta1), ("optim.beta2", self.optim.beta2)):
            if not 0 <= value < 1:
                fail(key, f"must be in [0, 1), got {value}")
        if self.schedule.min_lr_ratio > 1:
            fail("schedule.min_lr_ratio", f"must be <= 1, got {self.schedule.min_lr_ratio}")
        if self.schedule.warmup_steps > self.schedule.max_steps:
            fail("schedule.warmup_steps", f"{self.schedule.warmup_steps} exceeds "
                 f"schedule.max_steps={self.schedule.max_steps}")  # fmt: skip
        if self.train.global_batch_tokens is not None and isinstance(self.train.grad_accum, int):
            # A fixed accumulation would hold only for one process count; the token budget
            # decides the accumulation for any number of processes.
            fail("train.grad_accum", "set either train.grad_accum or train.global_batch_tokens "
                 "(grad_accum: auto), not both")  # fmt: skip

    # -- derived values ------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.data.seq_len

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-batches per optimizer step for ``world_size`` processes."""
        if isinstance(self.train.grad_accum, int):
            return self.train.grad_accum
        if self.train.global_batch_tokens is None:
            return 1
        per_pass = self.train.micro_batch_size * world_size * self.seq_len
        if self.train.global_batch_tokens % per_pass:
            raise ConfigError(
                f"train.global_batch_tokens: {self.train.global_batch_tokens} is not a multiple of "
                f"micro_batch_size x processes x seq_len = {self.train.micro_batch_size} x "
                f"{world_size} x {self.seq_len} = {per_pass}"
            )
        return self.train.global_batch_tokens // per_pass

    def model_config(self, tokenizer: Any) -> Any:
        """The ``OpenELMConfig`` this run trains: the preset with ``model.shape`` on top, the
        vocabulary sized for ``tokenizer`` (``auto``: every token, rounded up to a multiple of 64
        for the matmuls) and the tokenizer's special ids."""
        from elmforge.model.config import OpenELMConfig

        preset = OpenELMConfig.from_name(self.model.name, **self.model.shape)
        if self.seq_len > preset.max_context_length:
            raise ConfigError(
                f"data.seq_len: {self.seq_len} exceeds the model's max_context_length "
                f"{preset.max_context_length} (set model.shape.max_context_length)"
            )
        needed = len(tokenizer)
        vocab = self.model.vocab_size
        if vocab == "auto":
            vocab = -(-needed // 64) * 64
        elif vocab < needed:
            raise ConfigError(
                f"model.vocab_size: {vocab} is smaller than the tokenizer's {needed} tokens"
            )
        fields = dict(self.model.shape, vocab_size=vocab)
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, attr, None)
            if value is not None and value < vocab:
                fields[attr] = value
        return OpenELMConfig.from_name(self.model.name, **fields)


def shape_keys() -> frozenset[str]:
    """The ``OpenELMConfig`` fields ``model.shape`` may set."""
    from elmforge.model.config import OpenELMConfig

    parameters = inspect.signature(OpenELMConfig.__init__).parameters
    return frozenset(
        name
        for name, p in parameters.items()
        if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    )


def documented_keys() -> dict[str, str]:
    """Every dotted leaf key of the run config (data section included) with its documentation."""
    return kit.documented_keys(RunConfig)
