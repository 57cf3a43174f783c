"""Fine-tuning: ``finetune(job, config, out_dir)`` runs SFT or DPO, full or with a PEFT adapter,
on the training engine (:mod:`elmforge.train.engine`), the one pretraining runs on.

Engine. What the run computes is a task (:mod:`elmforge.finetune.tasks`: SFT's masked
cross-entropy, DPO's losses against a reference); the engine does the rest exactly as for
pretraining: checkpoints with their fallback to the last intact one, retention, RNG state,
resumption (to the bit after a SIGKILL), the resume rules (:mod:`elmforge.train.resume_rules`,
with fine-tuning's key names: :data:`FINETUNE_RULES`), precision and device, progress,
metrics.jsonl / TensorBoard / loss.png, SIGTERM/SIGINT unwinding, and ``torchrun`` processes
with FSDP2 (the frozen base of a PEFT run sharded with its adapter; a full DPO run's reference
sharded like the policy). TRL's ``DPOTrainer``/``SFTTrainer`` are the oracle instead: the tests
check that our losses and reward metrics equal theirs on the same batches. (Measured TRL 1.16
pitfalls on OpenELM: with no reference model it reloads one from ``config._name_or_path`` and
fails on the ``auto_map``; it defaults to bf16 and gradient checkpointing even on CPU; it adds no
bos to chat rows.)

A run directory (``elmforge.layout``) holds ``config.yaml`` (the job and the resolved config;
re-running resumes), ``metrics.jsonl``, ``tb/``, ``loss.png``, ``checkpoints/step-N/``
(``model/`` is the whole model, or with PEFT the adapter, plus optimizer, RNG and data cursor),
``adapter/`` (PEFT runs: the adapter in PEFT's format) and ``final/`` (the model in Apple's
layout, adapter merged, with the tokenizer and Apple's chat template).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from elmforge.errors import ConfigError, ElmforgeError
from elmforge.files import atomic_directory
from elmforge.finetune import adapters
from elmforge.finetune.config import OBJECTIVES, FinetuneConfig
from elmforge.finetune.lm_tasks import TaskScorer, keep_best_rule, task_request
from elmforge.finetune.tasks import DPOTask, ExampleLoader, SFTTask
from elmforge.finetune.tokenize import pad_id_of
from elmforge.layout import RunDir, is_run_dir
from elmforge.runtime import training_precision
from elmforge.train import distributed as dist_utils
from elmforge.train.engine import (
    Engine,
    check_resume,
    enable_activation_checkpointing,
    prepare_run_dir,
    run_in_process_group,
    seed_everything,
)
from elmforge.train.optim import WarmupCosineSchedule
from elmforge.train.resume_rules import ResumeRules
from elmforge.train.tracking import check_trackers

VERB = "finetune"
# The resume rule of pretraining, in fine-tuning's key names: the model and the adapter's shape
# are refused; the data, its rendering and the data order are refused unless --force-resume; the
# batch is compared as rows per optimizer step (the data order is global); the rest is applied.
FINETUNE_RULES = ResumeRules(
    model_keys=("job.objective", "job.model", "peft", "lora.r", "lora.alpha", "lora.targets"),
    exact_keys=("job.data", "job.tokenizer", "data", "seed", "eval.data", "eval.holdout"),
    batch_keys=("train.micro_batch_size", "train.grad_accum"),
    global_order=True,
)


@dataclass(frozen=True)
class FinetuneJob:
    """What to tune and on what; with a config and an output directory it is a run."""

    objective: str
    """``sft`` or ``dpo``."""
    model: str
    """The model to start from: a model directory (Apple's hub layout, a converted CoreNet
    checkpoint, an elmforge run's ``final/``) or a hub name."""
    data: str
    """The data (elmforge.finetune.data)."""
    tokenizer: str | None = None
    """A tokenizer spec; None: the model's own (LLaMA-2's for Apple's hub layouts)."""


# -- preparing ------------------------------------------------------------------------------------
def check_output(
    job: FinetuneJob, config: FinetuneConfig, out_dir: Path, force_resume: bool = False
) -> bool:
    """Claim ``out_dir`` (new, empty, or this verb's run: resumed under the resume rules);
    return whether changes that break exact resumption were forced through."""
    from elmforge.files import claim_output

    run = RunDir(out_dir)
    if not is_run_dir(out_dir):
        claim_output(
            out_dir, VERB, inputs=tuple(p for p in (job.model, job.data) if Path(p).exists())
        )
        return False
    try:
        previous = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("job"), dict):
        raise ElmforgeError(f"{out_dir}: a run directory, but not of `elmforge finetune`")
    return check_resume(out_dir, run_record(job, config), force_resume, FINETUNE_RULES,
                        without_checkpoints=True)  # fmt: skip


def run_record(job: FinetuneJob, config: FinetuneConfig) -> dict[str, Any]:
    """What ``config.yaml`` holds: the job beside the config's sections."""
    return {"job": asdict(job), **config.to_dict()}


def load_base(job: FinetuneJob, device: str) -> tuple[Any, Any, Path | None]:
    """(model in fp32 on ``device``, tokenizer with Apple's chat template, model directory)."""
    from elmforge.data.chat import ensure_chat_template
    from elmforge.modeldir.loading import load

    loaded = load(job.model, tokenizer=job.tokenizer, device=device, dtype="fp32")
    return loaded.model, ensure_chat_template(loaded.tokenizer), loaded.directory


def read_data(job: FinetuneJob, config: FinetuneConfig) -> tuple[list, str]:
    """The checked rows (SFT rows or preference pairs) and what they are, before any model loads
    (a bad row is reported in seconds)."""
    from elmforge.finetune import data

    if job.objective == "sft":
        rows, kind = data.load_sft_rows(job.data, config.data.split, config.data.prompt_style)
        return rows, f"{kind} rows"
    return data.load_preference_rows(job.data, config.data.split), "preference pairs"


def fit_lengths(config: FinetuneConfig, context: int | None) -> tuple[int, int, str]:
    """(max_length, max_prompt_length, note): the configured lengths, or for a model with a
    shorter context both scaled down to it (the prompt keeps its share)."""
    length, prompt = config.data.max_length, config.data.max_prompt_length
    if context is None or length <= context:
        return length, prompt, ""
    scaled = max(1, prompt * context // length)
    note = (f"; data.max_length {length} / max_prompt_length {prompt} cut to the model's "
            f"context: {context} / {scaled}")  # fmt: skip
    return context, scaled, note


def encode_data(
    job: FinetuneJob, lengths: tuple[int, int, str], rows: list, what: str, tokenizer: Any
) -> tuple[list, str]:
    """Tokenised examples (SFT rows or DPO pairs) and a line describing them."""
    from elmforge.finetune import tokenize

    length, prompt, note = lengths
    encode = tokenize.encode_sft if job.objective == "sft" else tokenize.encode_preferences
    examples, stats = encode(rows, tokenizer, length, prompt)
    if not examples:
        raise ElmforgeError(f"{job.data}: no row is left to train on ({stats.describe(what)})")
    return examples, f"data: {stats.describe(what)}{note}"


# -- the run -------------------------------------------------------------------------------------------
def finetune(
    job: FinetuneJob, config: FinetuneConfig, out_dir: str | Path, force_resume: bool = False
) -> Path:
    """Run ``job`` into ``out_dir`` (resuming a killed run there); return ``out_dir/final``."""
    if job.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {job.objective!r} ({' or '.join(OBJECTIVES)})")
    if job.objective == "dpo" and config.data.packing:
        raise ConfigError("data.packing: SFT only (a DPO pair's two sequences are scored apart)")
    out_dir = Path(out_dir)
    check_trackers(config.log.report_to)
    # eval.tasks and an eval.keep_best task metric are checked against lm-eval's index before
    # anything is written or loaded.
    scoring = task_request(config.eval, config.train.micro_batch_size)
    keep_best = keep_best_rule(config.eval)
    forced = check_output(job, config, out_dir, force_resume)
    rows, what = read_data(job, config)

    def build(env: dist_utils.DistEnv) -> Engine:
        prepare_run_dir(out_dir, env)
        return _build(job, config, out_dir, env, (rows, what), forced, (scoring, keep_best))

    return run_in_process_group(out_dir, config.train.device, config.train.num_threads, build, VERB)


def _build(
    job: FinetuneJob, config: FinetuneConfig, out_dir: Path, env: dist_utils.DistEnv,
    data: tuple[list, str], forced: bool, evaluation: tuple[Any, tuple[str, str] | None],
) -> Engine:  # fmt: skip
    rows, what = data
    scoring, keep_best = evaluation
    precision = training_precision(config.train.precision, env.device)
    seed_everything(config.seed)
    model, tokenizer, model_dir = load_base(job, str(env.device))
    if getattr(model.config, "model_type", None) != "openelm":
        raise ConfigError(
            f"{job.model}: a {model.config.model_type} model; elmforge finetune tunes OpenELM"
        )
    lengths = fit_lengths(config, getattr(model.config, "max_context_length", None))
    examples, data_line = encode_data(job, lengths, rows, what, tokenizer)
    examples, held_out, data_line = hold_aside(job, config, lengths, examples, data_line, tokenizer)
    rows_per_epoch = len(examples)
    if config.data.packing:  # packed rows of up to max_length tokens, about this many an epoch
        rows_per_epoch = -(-sum(len(e.ids) - 1 for e in examples) // lengths[0])
    max_steps, warmup = config.steps_for(rows_per_epoch, env.world_size)
    base_name = str(model_dir.resolve()) if model_dir is not None else job.model
    if config.model.activation_checkpointing:
        enable_activation_checkpointing(model, reentrant=False)
    reference = None
    if job.objective == "dpo" and config.peft == "none":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if config.peft != "none":
        lora = config.lora
        spec = adapters.lora_config(config.peft, lora.r, lora.alpha, lora.dropout, lora.targets)
        model = adapters.add_adapter(model, spec)
        model.peft_config["default"].base_model_name_or_path = base_name
    model.train()
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in adapters.trainable_parameters(model).values())

    def describe(env: dist_utils.DistEnv, grad_accum: int, steps: int) -> str:
        method = {"none": "full fine-tuning", "lora": "LoRA", "dora": "DoRA"}[config.peft]
        unit = "pairs" if job.objective == "dpo" else "rows"
        return (
            f"{job.objective.upper()} ({method}) of {job.model}: {trained:,} of {total:,} "
            f"parameters train ({trained / total:.2%}); {data_line}; {steps} steps of "
            f"{env.world_size} process(es) x {config.train.micro_batch_size} x {grad_accum} "
            f"{unit}, {precision} on {env.device.type}"
        )

    def write_final(task: Any) -> Path:
        return write_outputs(task, job, config, RunDir(out_dir), tokenizer)

    scorer = TaskScorer(scoring, tokenizer, precision, env) if scoring else None
    common = dict(write_final=write_final, describe=describe, held_out=held_out,
                  batch_size=config.train.micro_batch_size, pad_id=pad_id_of(tokenizer),
                  scorer=scorer)  # fmt: skip
    peft = config.peft != "none"
    if job.objective == "sft":
        task: Any = SFTTask(model, env, precision, peft, z_loss=config.optim.z_loss, **common)
    else:
        task = DPOTask(model, env, precision, peft, beta=config.dpo.beta, loss=config.dpo.loss,
                       reference=reference, **common)  # fmt: skip
    schedule = WarmupCosineSchedule(
        max_lr=config.optim.lr, min_lr=config.optim.lr * config.schedule.min_lr_ratio,
        warmup_steps=warmup, max_steps=max_steps, warmup_init_lr=config.schedule.warmup_init_lr,
    )  # fmt: skip
    loader = ExampleLoader(examples, config.seed, config.train.micro_batch_size, env,
                           pad_id_of(tokenizer),
                           lengths[0] if config.data.packing else None)  # fmt: skip
    text = yaml.safe_dump(run_record(job, config), sort_keys=False)
    return Engine(config, out_dir, env, task, loader, schedule, config.train.grad_accum, text,
                  fresh_data=forced, eval_every=config.eval.every, keep_best=keep_best)  # fmt: skip


def hold_aside(
    job: FinetuneJob, config: FinetuneConfig, lengths: tuple[int, int, str], examples: list,
    data_line: str, tokenizer: Any,
) -> tuple[list, list, str]:  # fmt: skip
    """(training examples, held-aside examples, data line): ``eval.data`` encoded, or the
    ``eval.holdout`` share of the examples drawn with the seed; nothing without ``eval.every``."""
    if not config.eval.every:
        return examples, [], data_line
    if config.eval.data:
        held_job = FinetuneJob(job.objective, job.model, config.eval.data, job.tokenizer)
        rows, what = read_data(held_job, config)
        held, line = encode_data(held_job, lengths, rows, what, tokenizer)
        return examples, held, f"{data_line}; held aside: {line.removeprefix('data: ')}"
    count = max(1, round(config.eval.holdout * len(examples)))
    if count >= len(examples):
        raise ConfigError(
            f"eval.holdout: {config.eval.holdout} of {len(examples)} rows leaves none to train on"
        )
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed))
    held_ids = set(order[:count].tolist())
    kept = [e for i, e in enumerate(examples) if i not in held_ids]
    held = [e for i, e in enumerate(examples) if i in held_ids]
    return kept, held, f"{data_line}; {count} held aside for evaluation"


def write_outputs(
    task: Any, job: FinetuneJob, config: FinetuneConfig, run_dir: RunDir, tokenizer: Any
) -> Path:
    """``adapter/`` (PEFT runs) and ``final/``: the model in Apple's layout, the adapter merged,
    with the tokenizer and Apple's chat template (a collective call; rank 0 writes)."""
    from elmforge.modeldir.save import write_model_dir

    state = task.trainable_state()
    if task.env.is_main:
        if config.peft != "none":
            from elmforge.modeldir.adapters import apply_adapter

            with atomic_directory(run_dir.adapter, verb=VERB) as tmp:
                adapters.write_adapter(task.model, state, tmp)
            base, _, _ = load_base(job, "cpu")
            merged = apply_adapter(base, run_dir.adapter)
            with atomic_directory(run_dir.final, verb=VERB) as tmp:
                write_model_dir(merged, tokenizer, tmp)
        else:
            with atomic_directory(run_dir.final, verb=VERB) as tmp:
                write_model_dir(task.model, tokenizer, tmp, state=state)
    dist_utils.barrier(task.env)
    return run_dir.final
