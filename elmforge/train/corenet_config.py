"""CoreNet's OpenELM YAML files (``projects/openelm/pretraining_configs``) as elmforge run configs.

Each CoreNet key is either copied to an elmforge key, understood without a field (elmforge always
does it, or it is bookkeeping; some require a value), or refused by name, so nothing in a CoreNet
config is silently dropped.
"""

from __future__ import annotations

from typing import Any

from elmforge.errors import ConfigError

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


def check_corenet_sources(run: dict[str, Any], source: str) -> None:
    sources = run.get("data", {}).get("sources")
    for i, item in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(item, dict) and "file_name" not in item and "name" not in item:
            raise ConfigError(
                f"{source}: dataset.language_modeling.general_lm.train_data_info[{i}]: no "
                f"file_name (CoreNet ships it commented out; set it, or override data.sources)"
            )
