"""What may change between a run and its resumption: the config is compared with ``config.yaml``.

The rule, stated once:

- **Refused, always**: the model (``model.name``, ``model.shape``, ``model.vocab_size``): the
  run's checkpoints do not fit another model.
- **Refused unless** ``force_resume``: keys that decide which tokens the model sees in which
  order: the data section's sources, tokenizer, sequence length, layout, filters, seed and
  shuffle buffer; the batch, the data sharding and the worker count (each worker reads its own
  shards). A resumed run with any of these changed is not the continuation of the run that was
  interrupted; with ``force_resume`` it resumes anyway and says that exact resumption is off.
  The batch is compared as the sequences one optimizer step consumes (processes x
  ``train.micro_batch_size`` x ``grad_accum``; per process with ``by_rank`` sharding), so a
  changed ``micro_batch_size``/``grad_accum``/``global_batch_tokens`` that keeps it (two
  processes of 2 resumed by one of 4, ``global_batch`` sharding) is applied; a changed process
  count alone is the trainer's to report (it keeps or restarts the data order).
- **Applied from the resumed step on, and printed**: everything else: the optimiser
  (``optim.*``: the new values take effect at the next step), the schedule (``schedule.*``: the
  learning rate is a pure function of the step, so a longer ``max_steps`` stretches the cosine
  from where the run is), validation, logging, checkpointing, precision and device.
- ``schedule.max_steps`` below the step being resumed is refused: the run is already past it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    "train.data_sharding",
    "train.num_workers",
)
# Keys that decide the batch: compared through the sequences per optimizer step.
BATCH_KEYS = ("train.micro_batch_size", "train.grad_accum", "train.global_batch_tokens")


@dataclass(frozen=True)
class ResumeRules:
    """Which keys of a verb's saved config are the model (always refused), which decide the data
    order (refused unless forced) and which the batch; everything else is applied. The rule is
    the same for every verb (module docstring); the key names are the verb's."""

    model_keys: tuple[str, ...] = MODEL_KEYS
    exact_keys: tuple[str, ...] = EXACT_KEYS
    batch_keys: tuple[str, ...] = BATCH_KEYS
    global_order: bool | None = None
    """The data order does not depend on the process count (``None``: ``train.data_sharding``
    says)."""


PRETRAINING = ResumeRules()


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


def sequences_per_step(config: Mapping[str, Any], world_size: int) -> int | None:
    """Sequences one optimizer step reads (all processes together) under ``config`` (a config
    mapping, ``RunConfig.to_dict()``'s shape), None when it cannot be worked out."""
    train, data = config.get("train") or {}, config.get("data") or {}
    micro, accum = train.get("micro_batch_size"), train.get("grad_accum", "auto")
    tokens, seq_len = train.get("global_batch_tokens"), data.get("seq_len")
    if not isinstance(micro, int):
        return None
    if not isinstance(accum, int):
        per_pass = micro * world_size * (seq_len if isinstance(seq_len, int) else 0)
        accum = 1 if tokens is None else (tokens // per_pass if per_pass else None)
    return None if accum is None else micro * accum * world_size


def _batch_kept(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    worlds: tuple[int, int],
    global_order: bool | None = None,
) -> bool:
    """Whether one optimizer step reads the same sequences from the same stream(s)."""
    if global_order is None:
        global_order = (current.get("train") or {}).get("data_sharding") == "global_batch"
    if global_order:  # one stream, cut into the global batch
        before, after = sequences_per_step(saved, worlds[0]), sequences_per_step(current, worlds[1])
    else:  # a stream per process: the process's share
        before = sequences_per_step(saved, worlds[0])
        after = sequences_per_step(current, worlds[1])
        before = before // worlds[0] if before is not None else None
        after = after // worlds[1] if after is not None else None
    return before is not None and before == after


def check_resume_config(
    saved_path: Path,
    current: Mapping[str, Any],
    force_resume: bool = False,
    report: Callable[[str], None] = print,
    worlds: tuple[int, int] = (1, 1),
    rules: ResumeRules = PRETRAINING,
) -> dict[str, tuple]:
    """Compare the run's saved config with ``current`` (see the module docstring for the rule);
    return the changes that break exact resumption and ``force_resume`` let through (the data
    stream then starts afresh: its saved position belongs to other data). ``worlds``: the process
    counts of the saved checkpoint and of this run; ``rules``: the verb's key names."""
    if not saved_path.exists() and not saved_path.is_symlink():
        report(f"{saved_path} is missing: the resumed config cannot be compared with the run's")
        return {}
    saved = read_yaml(saved_path)
    changes = config_changes(saved, current)
    model = {k: v for k, v in changes.items() if _among(k, rules.model_keys)}
    if model:
        raise CheckpointError(
            f"{saved_path}: resuming with {describe(model)}: the run's checkpoint does not fit "
            "this model; keep the run's model settings or pick a new run directory"
        )
    refused = {k: v for k, v in changes.items() if _among(k, rules.exact_keys)}
    batch = {k: v for k, v in changes.items() if k in rules.batch_keys}
    if batch and not _batch_kept(saved, current, worlds, rules.global_order):
        refused.update(batch)
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
