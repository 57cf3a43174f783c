"""What may change between a run and its resumption: the config is compared with ``config.yaml``.

The rule, stated once:

- **Refused, always**: the model (``model.name``, ``model.shape``, ``model.vocab_size``): the
  run's checkpoints do not fit another model.
- **Refused unless** ``force_resume``: keys that decide which tokens the model sees in which
  order: the data section's sources, tokenizer, sequence length, layout, filters, seed and
  shuffle buffer; the batch (``train.micro_batch_size``, ``grad_accum``, ``global_batch_tokens``),
  the data sharding and the worker count (each worker reads its own shards). A resumed run with
  any of these changed is not the continuation of the run that was interrupted; with
  ``force_resume`` it resumes anyway and says that exact resumption is off.
- **Applied from the resumed step on, and printed**: everything else: the optimiser
  (``optim.*``: the new values take effect at the next step), the schedule (``schedule.*``: the
  learning rate is a pure function of the step, so a longer ``max_steps`` stretches the cosine
  from where the run is), validation, logging, checkpointing, precision and device.
- ``schedule.max_steps`` below the step being resumed is refused: the run is already past it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elmforge.config import read_yaml
from elmforge.errors import CheckpointError, ConfigError

# Keys whose change makes the checkpoints unusable.
MODEL_KEYS = ("model.name", "model.shape", "model.vocab_size")
# Keys whose change breaks exact resumption.
EXACT_KEYS = (
    "data.sources",
    "data.tokenizer",
    "data.bpe_vocab_size",
    "data.seq_len",
    "data.mode",
    "data.seed",
    "data.shuffle_buffer",
    "data.min_characters",
    "data.min_tokens",
    "data.chunk_characters",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.global_batch_tokens",
    "train.data_sharding",
    "train.num_workers",
)


def _flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``section.key -> value`` for the sections' keys (mappings inside a section, such as
    ``model.shape``, stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """Dotted key -> (saved value, current value) for every key that differs. A key the saved
    config lacks (written by an older elmforge) counts as unchanged."""
    old, new = _flatten(saved), _flatten(current)
    return {key: (old[key], new.get(key)) for key in old if old[key] != new.get(key) and key in new}


def _among(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == known or key.startswith(known + ".") for known in keys)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(changes: Mapping[str, tuple]) -> str:
    return ", ".join(f"{key} {_shown(a)} -> {_shown(b)}" for key, (a, b) in changes.items())


def check_resume_config(
    saved_path: Path,
    current: Mapping[str, Any],
    force_resume: bool = False,
    report: Callable[[str], None] = print,
) -> dict[str, tuple]:
    """Compare the run's saved config with ``current`` (see the module docstring for the rule);
    return the changes that break exact resumption and ``force_resume`` let through (the data
    stream then starts afresh: its saved position belongs to other data)."""
    if not saved_path.exists() and not saved_path.is_symlink():
        report(f"{saved_path} is missing: the resumed config cannot be compared with the run's")
        return {}
    changes = config_changes(read_yaml(saved_path), current)
    model = {k: v for k, v in changes.items() if _among(k, MODEL_KEYS)}
    if model:
        raise CheckpointError(
            f"{saved_path}: resuming with {describe(model)}: the run's checkpoint does not fit "
            "this model; keep the run's model settings or pick a new run directory"
        )
    refused = {k: v for k, v in changes.items() if _among(k, EXACT_KEYS)}
    applied = {k: v for k, v in changes.items() if k not in refused}
    if refused and not force_resume:
        raise ConfigError(
            f"{saved_path}: resuming with {describe(refused)} would not continue this run "
            "exactly (data order or batch); keep the run's values, pick a new run "
            "directory, or pass --force-resume"
        )
    if refused:
        report(
            f"resuming with {describe(refused)} (--force-resume): exact resumption is off, the "
            "data stream starts again from its beginning"
        )
    if applied:
        report(
            f"resuming with changed settings, applied from the resumed step: {describe(applied)}"
        )
    return refused


def check_resume_step(max_steps: int, step: int, checkpoint: str) -> None:
    """Refuse a schedule that ends before the step the run resumes from."""
    if max_steps < step:
        raise ConfigError(
            f"schedule.max_steps: {max_steps} is below step {step} of {checkpoint}, which the run "
            "resumes from"
        )
