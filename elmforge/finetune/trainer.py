"""The fine-tuning loop: ``finetune(job)`` runs SFT or DPO, full or with a PEFT adapter.

Engine. The losses run inside an elmforge loop built from the pretraining engine's parts
(``train.optim``: AdamW groups and the warm-up + cosine schedule, a pure function of the step;
``train.checkpoint``: atomic checkpoint directories with a sha256 manifest, RNG capture, retention;
``train.logging``: metrics.jsonl, TensorBoard, loss.png, progress with rate and ETA), rather than
on TRL's trainers, because what a fine-tuning run must do is what those parts already do: resume
to the bit after a SIGKILL (data cursor, RNG, optimizer), fp32 on CPU by default, our metrics.
TRL's ``DPOTrainer``/``SFTTrainer`` are the oracle instead: the tests check that our losses and
reward metrics equal theirs on the same batches. (Measured TRL 1.16 pitfalls on OpenELM: with no
reference model it reloads one from ``config._name_or_path`` and fails on the ``auto_map``; it
defaults to bf16 and gradient checkpointing even on CPU; it adds no bos to chat rows.)

A run directory (``elmforge.layout``) holds ``config.yaml`` (the job and the resolved
config; a re-run with the same command resumes, another config is refused), ``metrics.jsonl``,
``tb/``, ``loss.png``, ``checkpoints/step-N/`` (``model/`` is the whole model, or with PEFT the
adapter, plus optimizer, RNG and data cursor), ``adapter/`` (PEFT runs: the adapter in PEFT's
format) and ``final/`` (the model in Apple's layout, adapter merged, with the tokenizer and
Apple's chat template).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from elmforge.errors import ConfigError, ElmforgeError
from elmforge.files import atomic_directory, atomic_write_text
from elmforge.finetune import adapters
from elmforge.finetune.config import FinetuneConfig
from elmforge.finetune.steps import Stepper
from elmforge.finetune.tokenize import pad_id_of
from elmforge.layout import ADAPTER_WEIGHTS, CHECKPOINT_MODEL, WEIGHTS, RunDir, is_run_dir
from elmforge.locks import hold_directory
from elmforge.modeldir.adapters import merge_adapter
from elmforge.modeldir.save import save_model_dir, write_model_dir
from elmforge.train import checkpoint as ckpt
from elmforge.train.logging import RunLogger
from elmforge.train.optim import WarmupCosineSchedule, build_optimizer

VERB = "finetune"
DATA_STATE = "data"
# Settings a resumed run may change: they do not change what the run computes.
RESUMABLE_CHANGES = ("log", "train.num_threads", "checkpoint.keep_last")


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
def check_output(job: FinetuneJob, config: FinetuneConfig, out_dir: Path) -> bool:
    """Whether ``out_dir`` is this job's earlier run (resume); anything else there is refused."""
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
    current = _without_resumable(run_record(job, config))
    if not isinstance(previous, dict) or not isinstance(previous.get("job"), dict):
        raise ElmforgeError(f"{out_dir}: a run directory, but not of `elmforge finetune`")
    previous = _without_resumable(previous)
    for section in ("job", "config"):
        if previous.get(section) != current[section]:
            differing = _first_difference(previous.get(section), current[section], section)
            raise ElmforgeError(
                f"{out_dir}: holds a fine-tuning run with another setting ({differing}); "
                "re-run the same command to resume, or pick another --out"
            )
    return True


def _without_resumable(record: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    for key in RESUMABLE_CHANGES:
        node, *path, last = ["config", *key.split(".")]
        parent = record.get(node)
        for part in path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(last, None)
    return record


def _first_difference(old: Any, new: Any, key: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                return _first_difference(old.get(name), new.get(name), f"{key}.{name}")
    return f"{key}: {old!r} then, {new!r} now"


def run_record(job: FinetuneJob, config: FinetuneConfig) -> dict[str, Any]:
    return {"job": asdict(job), "config": config.to_dict()}


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


def pick_device(config: FinetuneConfig) -> torch.device:
    wanted = config.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    use_cuda = wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def precision_of(config: FinetuneConfig, device: torch.device) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


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

    def take(self, n: int) -> list[int]:
        picked = []
        for _ in range(n):
            if self.position == self.count:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            picked.append(self._order[self.position])
            self.position += 1
        return picked

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


# -- the run -------------------------------------------------------------------------------------------
def finetune(job: FinetuneJob, config: FinetuneConfig, out_dir: str | Path) -> Path:
    """Run ``job`` into ``out_dir`` (resuming a killed run there); return ``out_dir/final``."""
    if job.objective not in ("sft", "dpo"):
        raise ConfigError(f"unknown objective {job.objective!r} (sft or dpo)")
    out_dir = Path(out_dir)
    resuming = check_output(job, config, out_dir)
    rows, what = read_data(job, config)
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    with hold_directory(out_dir, VERB):  # one writer per run directory (elmforge.locks)
        return _Run(job, config, out_dir, resuming, rows, what).run()


class _Run:
    def __init__(
        self, job: FinetuneJob, config: FinetuneConfig, out: Path, resuming: bool, rows: list,
        what: str,
    ) -> None:  # fmt: skip
        self.job, self.config, self.run_dir = job, config, RunDir(out)
        self.device = pick_device(config)
        self.precision = precision_of(config, self.device)
        torch.manual_seed(config.seed)
        model, self.tokenizer, self.model_dir = load_base(job, str(self.device))
        if getattr(model.config, "model_type", None) != "openelm":
            raise ConfigError(
                f"{job.model}: a {model.config.model_type} model; elmforge finetune tunes OpenELM"
            )
        lengths = fit_lengths(config, getattr(model.config, "max_context_length", None))
        self.examples, self.data_line = encode_data(job, lengths, rows, what, self.tokenizer)
        self.max_steps, warmup = config.steps_for(len(self.examples))
        reference = None
        if job.objective == "dpo" and config.peft == "none":
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        if config.peft != "none":
            lora = config.lora
            spec = adapters.lora_config(config.peft, lora.r, lora.alpha, lora.dropout,
                                        lora.targets)  # fmt: skip
            model = adapters.add_adapter(model, spec)
        self.model = model.train()
        optim = config.optim
        self.schedule = WarmupCosineSchedule(
            max_lr=optim.lr, min_lr=optim.lr * config.schedule.min_lr_ratio,
            warmup_steps=warmup, max_steps=self.max_steps,
            warmup_init_lr=config.schedule.warmup_init_lr,
        )  # fmt: skip
        self.optimizer = build_optimizer(model, optim, self.schedule.lr(0))
        self.stream = ExampleStream(len(self.examples), config.seed)
        self.stepper = Stepper(job.objective, model, self.optimizer, config, self.device,
                               self.precision, pad_id_of(self.tokenizer), reference)  # fmt: skip
        self.resuming = resuming

    def _step(self, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step over the next micro-batches of the data order."""
        train = self.config.train
        micro_batches = [
            [self.examples[i] for i in self.stream.take(train.micro_batch_size)]
            for _ in range(train.grad_accum)
        ]
        return self.stepper.step(micro_batches, step)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self, step: int, counters: dict[str, Any]) -> None:
        final = self.run_dir.checkpoints / ckpt.step_dir_name(step)
        with atomic_directory(final) as tmp:
            self._write_model(tmp / CHECKPOINT_MODEL)
            torch.save(self.optimizer.state_dict(), tmp / ckpt.OPTIMIZER_STATE)
            torch.save([ckpt.capture_rng_state()], tmp / ckpt.RNG_STATE)
            trainer = {"step": step, DATA_STATE: self.stream.state_dict(), **counters}
            (tmp / ckpt.TRAINER_STATE).write_text(json.dumps(trainer, indent=1), encoding="utf-8")
            ckpt.write_manifest(tmp, {"step": step})
        ckpt.apply_retention(self.run_dir.root, self.config.checkpoint.keep_last)

    def _write_model(self, directory: Path) -> None:
        if self.config.peft != "none":
            adapters.save_adapter(self.model, directory, self._base_name())
        else:
            save_model_dir(self.model.config, self.model.state_dict(), directory)

    def _base_name(self) -> str:
        return str(self.model_dir.resolve()) if self.model_dir is not None else self.job.model

    def _resume(self, info: Any) -> dict[str, Any] | None:
        # A checkpoint whose states fail to load (one refused as unsafe) is skipped like a
        # corrupt one; none usable is an error rather than a fresh start over the run.
        found = ckpt.load_resume_checkpoint(self.run_dir.root, info, ckpt.load_training_state)
        if found is None:
            return None
        path, state = found
        from safetensors.torch import load_file

        model_dir = path / CHECKPOINT_MODEL
        try:
            if self.config.peft != "none":
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.model, load_file(model_dir / ADAPTER_WEIGHTS))
            else:
                from elmforge.train.distributed import load_full_state

                load_full_state(self.model, None, load_file(model_dir / WEIGHTS), None)
            self.optimizer.load_state_dict(state["optimizer"])
            rng, trainer = state["rng"], state["trainer"]
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise ElmforgeError(f"{path}: cannot resume from this checkpoint ({err})") from None
        ckpt.restore_rng_state(rng[0])
        self.stream.load_state_dict(trainer[DATA_STATE])
        info(f"resumed from {path.relative_to(self.run_dir.root)} (step {trainer['step']})")
        return trainer

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> Path:
        run_dir, config = self.run_dir, self.config
        run_dir.root.mkdir(parents=True, exist_ok=True)
        ckpt.clean_stale_temporaries(run_dir.root)
        trainer = self._resume(print) if self.resuming else None
        step = int(trainer["step"]) if trainer else 0
        counters: dict[str, Any] = {"tokens": 0, "elapsed_s": 0.0}
        if trainer:
            counters.update({k: trainer[k] for k in counters if k in trainer})
        atomic_write_text(
            run_dir.config, yaml.safe_dump(run_record(self.job, config), sort_keys=False)
        )
        log = config.log
        logger = RunLogger(run_dir.root, step, self.max_steps, tensorboard=log.tensorboard,
                           plot=log.plot, progress=log.progress)  # fmt: skip
        try:
            if step == 0:
                logger.info(self._describe())
            self._train(step, counters, logger)
            return self._write_outputs(logger)
        finally:
            logger.close()

    def _train(self, step: int, counters: dict[str, Any], logger: RunLogger) -> None:
        config = self.config
        started, before = time.monotonic(), float(counters["elapsed_s"])
        interval: dict[str, float] = {}
        interval_steps, interval_tokens, interval_start = 0, 0, time.monotonic()
        while step < self.max_steps:
            lr = self.schedule.apply(self.optimizer, step)
            record, tokens = self._step(step)
            step += 1
            for key, value in record.items():
                interval[key] = interval.get(key, 0.0) + value
            interval_steps += 1
            interval_tokens += tokens
            counters["tokens"] += tokens
            counters["elapsed_s"] = before + time.monotonic() - started
            logger.advance()
            if step % config.log.log_every == 0 or step == self.max_steps:
                seconds = max(time.monotonic() - interval_start, 1e-9)
                means = {k: v / interval_steps for k, v in interval.items()}
                logger.log({
                    "step": step, **means, "grad_norm": record["grad_norm"], "lr": lr,
                    "tokens": counters["tokens"], "tokens_per_s": interval_tokens / seconds,
                    "elapsed_s": counters["elapsed_s"],
                    "eta_s": (self.max_steps - step) * seconds / interval_steps,
                })  # fmt: skip
                interval, interval_steps, interval_tokens = {}, 0, 0
                interval_start = time.monotonic()
            if step % config.checkpoint.save_every == 0 or step == self.max_steps:
                self._save(step, counters)

    def _describe(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in adapters.trainable_parameters(self.model).values())
        method = {"none": "full fine-tuning", "lora": "LoRA", "dora": "DoRA"}[self.config.peft]
        train = self.config.train
        return (
            f"{self.job.objective.upper()} ({method}) of {self.job.model}: {trained:,} of "
            f"{total:,} parameters train ({trained / total:.2%}); {self.data_line}; "
            f"{self.max_steps} steps of {train.micro_batch_size} x {train.grad_accum} "
            f"{'pairs' if self.job.objective == 'dpo' else 'rows'}, {self.precision} on "
            f"{self.device.type}"
        )

    def _write_outputs(self, logger: RunLogger) -> Path:
        model = self.model
        if self.config.peft != "none":
            with atomic_directory(self.run_dir.adapter, verb=VERB) as tmp:
                adapters.save_adapter(model, tmp, self._base_name())
            model = merge_adapter(model)
        with atomic_directory(self.run_dir.final, verb=VERB) as tmp:
            write_model_dir(model, self.tokenizer, tmp)
        where = f"{self.run_dir.final}" + (
            f", adapter in {self.run_dir.adapter}" if self.config.peft != "none" else ""
        )
        logger.info(f"done: {self.max_steps} steps; model in {where}")
        return self.run_dir.final
