"""Run configuration: the YAML schema of ``elmforge pretrain``, as typed dataclasses.

Every field's docstring (the string literal after it, collected by :func:`field_docs`) is its
documentation. A config is validated completely before anything runs: an unknown key or a bad
value raises :class:`~elmforge.errors.ConfigError` naming the dotted key.

Three ways in:
- ``RunConfig.from_yaml(path, overrides)`` for elmforge's own YAML (``configs/*.yaml``);
- ``RunConfig.from_dict(d)`` for a dict of the same shape;
- ``RunConfig.from_corenet_yaml(path, overrides)`` for CoreNet's OpenELM YAML files, mapping the
  sections elmforge understands and refusing every other key by name.

Overrides are ``"optim.lr=1e-3"`` strings (the CLI turns ``--optim.lr 1e-3`` into that); values
are parsed as YAML, then coerced to the field's type, so ``1e-3`` is a float here even though
YAML 1.1 would read it as a string.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from elmforge.data.pipeline import DataConfig
from elmforge.errors import ConfigError


@dataclass
class ModelSection:
    name: str = "OpenELM-tiny"
    """A preset of ``OpenELMConfig.from_name`` (OpenELM-270M, -450M, -1_1B, -3B, -tiny, -micro)."""
    shape: dict[str, Any] = field(default_factory=dict)
    """``OpenELMConfig`` fields overriding the preset (e.g. ``num_transformer_layers: 6``)."""
    vocab_size: int | Literal["auto"] = "auto"
    """Embedding rows. ``auto``: the tokenizer's size rounded up to a multiple of 64 (32000 for
    LLaMA-2)."""
    activation_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (memory for compute)."""
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
class TrainSection:
    micro_batch_size: int = 16
    """Sequences per process per forward/backward pass."""
    grad_accum: int | Literal["auto"] = "auto"
    """Micro-batches accumulated per optimizer step. ``auto``: from ``global_batch_tokens`` (1 if
    that is unset)."""
    global_batch_tokens: int | None = None
    """Tokens per optimizer step over all processes; sets ``grad_accum`` to
    global_batch_tokens / (micro_batch_size x processes x seq_len), which must divide exactly."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``bf16``: bfloat16 autocast (fp32 master weights and optimizer state); ``fp32``; ``auto``:
    bf16 on GPUs that support it, fp32 on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train. ``auto``: CUDA if available."""
    max_nonfinite_steps: int = 5
    """Stop (after saving a checkpoint) when this many steps in a row had a non-finite loss or
    gradient; each such step is skipped and counted."""
    num_workers: int = 0
    """Data loader worker processes per training process."""
    data_sharding: Literal["by_rank", "global_batch"] = "by_rank"
    """``by_rank``: each process reads its own share of the shards (scales to many processes).
    ``global_batch``: every process reads the same stream of global batches and keeps its rows,
    so the data order (and resumption) does not depend on the number of processes."""
    num_threads: int = 0
    """CPU threads for PyTorch (0: leave PyTorch's default)."""


@dataclass
class CheckpointSection:
    save_every: int = 5000
    """Save a checkpoint (HF model + full training state) every this many steps, and at the end."""
    keep_last: int = 5
    """Keep this many most recent checkpoints (0 keeps all)."""


@dataclass
class LogSection:
    log_every: int = 10
    """Write a metrics line (metrics.jsonl, TensorBoard, progress, loss.png) every N steps."""
    eval_every: int = 0
    """Validation loss on the held-out split every N steps and at the end (0: only at the end)."""
    eval_batches: int = 8
    """Micro-batches per validation (0 disables validation)."""
    eval_split: str = "validation"
    """The data split used for validation."""
    tensorboard: bool = True
    """Write TensorBoard event files under ``tb/``."""
    plot: bool = True
    """Refresh ``loss.png`` at each log line, each validation and at the end."""
    progress: Literal["auto", "bar", "plain", "none"] = "auto"
    """``auto``: a tqdm bar in a terminal, plain lines when not a TTY or when ``CI`` is set."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for the MFU estimate. Unset: a table of GPUs (bf16 dense), and
    on CPU an assumed 32 fp32 FLOP/cycle (two AVX2 FMA units) x 2.5 GHz x threads."""


@dataclass
class RunConfig:
    """A whole pretraining run; the top-level keys of the YAML file."""

    model: ModelSection = field(default_factory=ModelSection)
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data pipeline's section (``elmforge.data.pipeline.DataConfig``): sources, tokenizer,
    seq_len, filters, packing; ``data.seed`` defaults to ``seed``. ``tokenizer``: a path; null:
    the LLaMA-2 model under shared/data; ``auto``: LLaMA-2 when present, else ``bpe``; ``bpe``: a
    BPE tokenizer of ``bpe_vocab_size`` tokens trained on the training sources."""
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
    bpe_vocab_size: int = 8192
    """Vocabulary of the BPE tokenizer trained (on the first 8M characters of the training
    sources) when ``data.tokenizer`` is ``bpe``, or ``auto`` without the LLaMA-2 tokenizer."""

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """Build and validate; an unknown key or a bad value raises ConfigError naming it."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"{source}: expected a mapping at the top level, got {type(d).__name__}"
            )
        data = d.get("data")
        if isinstance(data, dict) and "seed" not in data:
            d = {**d, "data": {**data, "seed": d.get("seed", 0)}}
        config = _build(cls, d, prefix="", source=source)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
        """Read an elmforge YAML run config, then apply ``key.path=value`` overrides."""
        raw = _read_yaml(path)
        apply_overrides(raw, overrides)
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_corenet_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
        """Read one of CoreNet's OpenELM YAML files (``projects/openelm/pretraining_configs``)."""
        raw = corenet_to_run_dict(_read_yaml(path), str(path))
        apply_overrides(raw, overrides)
        _check_corenet_sources(raw, str(path))
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- cross-field checks ------------------------------------------------------------------------
    def validate(self, source: str = "config") -> None:
        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{source}: {key}: {message}")

        from elmforge.model.config import OpenELMConfig

        if self.model.name.lower() not in {n.lower() for n in OpenELMConfig.preset_names()}:
            fail("model.name", f"unknown preset {self.model.name!r} (presets: "
                 f"{', '.join(OpenELMConfig.preset_names())})")  # fmt: skip
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
        if self.bpe_vocab_size < 300:
            fail("bpe_vocab_size", f"must be at least 300, got {self.bpe_vocab_size}")
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


# -- generic dataclass building -------------------------------------------------------------------
def _build(cls: type, d: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {prefix + str(key)!r} (known: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for key, value in d.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as type ``hint``, or a ConfigError naming ``key``."""
    if hint is DataConfig:  # the data pipeline validates its own section (errors name the key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        try:
            return DataConfig.from_dict(value or {}, where=key)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return _build(hint, value, key + ".", source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, _union_type()):
        errors = []
        for option in sorted(args, key=_literal_first):
            try:
                return _coerce(value, option, key, source)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{source}: {key}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{source}: {key}: expected one of {', '.join(map(repr, args))}, got {value!r}"
        )
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{source}: {key}: expected null, got {value!r}")
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(value.replace("_", ""))
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
    if hint is Any:
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not user input


def _union_type() -> Any:
    import types

    return types.UnionType


def _literal_first(option: Any) -> int:
    # Try exact literals and null before coercing strings into numbers.
    return 0 if typing.get_origin(option) is Literal or option is type(None) else 1


def _describe(hint: Any) -> str:
    parts = []
    for option in typing.get_args(hint):
        if typing.get_origin(option) is Literal:
            parts.extend(repr(a) for a in typing.get_args(option))
        elif option is type(None):
            parts.append("null")
        else:
            parts.append(
                {int: "an integer", float: "a number", str: "a string"}.get(option, str(option))
            )
    return " or ".join(parts)


# -- YAML and overrides ----------------------------------------------------------------------------
def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"{path}: not valid YAML ({' '.join(first[:2])})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings in place (values parsed as YAML)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. optim.lr=1e-3)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def overrides_from_argv(argv: typing.Sequence[str]) -> list[str]:
    """``["--optim.lr", "1e-3", "--seed=3"]`` -> ``["optim.lr=1e-3", "seed=3"]``."""
    result: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) < 3:
            raise ConfigError(
                f"unexpected argument {token!r} (overrides look like --optim.lr 1e-3)"
            )
        if "=" in token:
            result.append(token[2:])
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ConfigError(f"override {token}: missing value")
        result.append(f"{token[2:]}={argv[i + 1]}")
        i += 2
    return result


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (for docs and ``--help``)."""
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    tree = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    body = tree.body
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


# -- CoreNet YAML import -----------------------------------------------------------------------------
# CoreNet key (dotted) -> elmforge key, for values copied as they are. Keys in _CORENET_ACCEPTED are
# understood but need no field (elmforge always does that, or it is bookkeeping); anything else is
# refused by name so nothing in a CoreNet config is silently dropped.
_CORENET_COPY = {
    "common.grad_clip": "optim.grad_clip",
    "common.save_interval_freq": "checkpoint.save_every",
    "common.log_freq": "log.log_every",
    "common.eval_every_k_iterations": "log.eval_every",
    "common.accum_freq": "train.grad_accum",
    "common.seed": "seed",
    "dataset.train_batch_size0": "train.micro_batch_size",
    "dataset.workers": "train.num_workers",
    "dataset.language_modeling.sequence_length": "data.seq_len",
    "dataset.language_modeling.min_tokens_per_text": "data.min_tokens",
    "dataset.language_modeling.min_characters_per_text": "data.min_characters",
    "dataset.language_modeling.general_lm.train_data_info": "data.sources",
    "text_tokenizer.sentence_piece.model_path": "data.tokenizer",
    "optim.weight_decay": "optim.weight_decay",
    "optim.adamw.beta1": "optim.beta1",
    "optim.adamw.beta2": "optim.beta2",
    "optim.adamw.eps": "optim.eps",
    "scheduler.max_iterations": "schedule.max_steps",
    "scheduler.warmup_iterations": "schedule.warmup_steps",
    "scheduler.warmup_init_lr": "schedule.warmup_init_lr",
    "scheduler.cosine.max_lr": "optim.lr",
    "model.activation_checkpointing": "model.activation_checkpointing",
    "model.language_modeling.general_gpt.model_name": "model.name",
}
# Keys elmforge understands without a field, with the value it requires (None: any value).
_CORENET_ACCEPTED: dict[str, Any] = {
    "taskname": None,
    "common.run_label": None,
    "common.auto_resume": None,  # elmforge always resumes from --out
    "common.save_all_checkpoints": None,
    "common.mixed_precision": None,  # read with mixed_precision_dtype below
    "common.mixed_precision_dtype": None,
    "dataset.root_train": None,
    "dataset.disable_val": None,
    "dataset.persistent_workers": None,
    "dataset.pin_memory": None,
    "dataset.category": "language_modeling",
    "dataset.name": "general_lm",
    "dataset.language_modeling.shuffle_data": True,
    "text_tokenizer.name": "sentence_piece",
    # The data pipeline always NFC-normalises and frames documents with bos/eos, as CoreNet does.
    "text_tokenizer.sentence_piece.enable_nfc_normalization": True,
    "text_tokenizer.sentence_piece.append_sot_token": True,
    "text_tokenizer.sentence_piece.append_eot_token": True,
    "loss.category": "language_modeling",
    "loss.language_modeling.name": "cross_entropy",
    "loss.language_modeling.cross_entropy.ignore_index": None,  # pads are always ignored
    "loss.language_modeling.cross_entropy.use_z_loss": None,
    "optim.name": "adamw",
    "optim.no_decay_bn_filter_bias": True,
    "scheduler.is_iteration_based": True,
    "scheduler.name": "cosine",
    "scheduler.cosine.min_lr": None,  # becomes schedule.min_lr_ratio
    "model.language_modeling.name": "general_gpt",
    # CoreNet pads the embedding to 32128 rows for the padding index; the HF layout does not.
    "model.language_modeling.general_gpt.vocab_size": None,
    "model.language_modeling.general_gpt.max_context_length": None,
    "model.language_modeling.general_gpt.padding_index": None,
    "train_eval_pipeline.name": None,
    "fsdp.sharding_strategy": "full_shard",
    "fsdp.parameter_datatype": None,
    "fsdp.gradient_reduction_datatype": None,
    "fsdp.buffer_datatype": None,
    "fsdp.cpu_offload": False,
    "fsdp.limit_all_gathers": None,
    "stats.val": None,
    "stats.train": None,
    "stats.checkpoint_metric": None,
    "stats.checkpoint_metric_max": None,
}
_CORENET_LEAVES_THAT_ARE_MAPPINGS = {"dataset.language_modeling.general_lm.train_data_info"}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _CORENET_LEAVES_THAT_ARE_MAPPINGS:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def corenet_to_run_dict(corenet: dict[str, Any], source: str) -> dict[str, Any]:
    """Map a CoreNet OpenELM config onto elmforge's schema; refuse unknown keys by name."""
    flat = {k: v for k, v in _flatten(corenet).items() if not k.startswith("_anchor")}
    run: dict[str, Any] = {}

    def put(dotted: str, value: Any) -> None:
        node = run
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    for key, value in flat.items():
        if key in _CORENET_COPY:
            put(_CORENET_COPY[key], value)
        elif key in _CORENET_ACCEPTED:
            required = _CORENET_ACCEPTED[key]
            if required is not None and value != required:
                raise ConfigError(
                    f"{source}: CoreNet key {key!r}: elmforge supports only {required!r}, "
                    f"got {value!r}"
                )
        else:
            raise ConfigError(f"{source}: CoreNet key {key!r} is not supported by elmforge")
    put("data.mode", "padding")  # CoreNet pads every document to the sequence length
    use_z_loss = flat.get("loss.language_modeling.cross_entropy.use_z_loss", False)
    put("optim.z_loss", 1e-4 if use_z_loss else 0.0)
    mixed = flat.get("common.mixed_precision")
    mixed_dtype = flat.get("common.mixed_precision_dtype", "bfloat16" if mixed else None)
    if mixed and mixed_dtype not in ("bfloat16", "bf16"):
        raise ConfigError(
            f"{source}: CoreNet key 'common.mixed_precision_dtype': elmforge supports only "
            f"'bfloat16', got {mixed_dtype!r}"
        )
    if mixed or flat.get("fsdp.parameter_datatype") == "bfloat16":
        put("train.precision", "bf16")
    elif mixed is not None:  # mixed_precision: false asks for full precision
        put("train.precision", "fp32")
    max_lr = flat.get("scheduler.cosine.max_lr")
    min_lr = flat.get("scheduler.cosine.min_lr")
    if max_lr is not None and min_lr is not None:
        put("schedule.min_lr_ratio", round(float(min_lr) / float(max_lr), 12))
    if flat.get("common.save_all_checkpoints"):
        put("checkpoint.keep_last", 0)
    return run


def _check_corenet_sources(run: dict[str, Any], source: str) -> None:
    sources = run.get("data", {}).get("sources")
    for i, item in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(item, dict) and "file_name" not in item and "name" not in item:
            raise ConfigError(
                f"{source}: dataset.language_modeling.general_lm.train_data_info[{i}]: no "
                f"file_name (CoreNet ships it commented out; set it, or override data.sources)"
            )


def documented_keys() -> dict[str, str]:
    """Every dotted leaf key of the run config (data section included) with its documentation."""
    keys: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys[prefix + f.name] = docs.get(f.name, "")

    walk(RunConfig, "")
    return keys
