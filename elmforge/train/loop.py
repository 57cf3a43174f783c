"""The pretraining loop: ``pretrain(config, out_dir)``.

One function drives a run from one CPU process to many GPU processes under ``torchrun``:

1. join the process group (if launched by torchrun), seed everything;
2. resolve the tokenizer (``elmforge.data.tokenizer_choice``: a trained BPE is kept in
   ``OUT/tokenizer``) and build the model (FSDP2-sharded when
   distributed; optional activation checkpointing and ``torch.compile``);
3. resume from the newest intact checkpoint under ``OUT/checkpoints`` if any: weights, AdamW
   state, step, every rank's data-loader state and RNG states, so the continued run is bit-for-bit
   the uninterrupted one on CPU fp32;
4. train: per optimizer step ``grad_accum`` micro-batches per process; the loss is the summed
   cross-entropy + z-loss divided by the target-token count of the whole step over all processes
   (so P processes x B sequences give the gradient of 1 process x P*B); clip; AdamW; the LR of
   step s is a pure function of s (warm-up + cosine). A non-finite loss or gradient skips the step;
   ``train.max_nonfinite_steps`` in a row saves a checkpoint and stops with a clear message;
5. log (metrics.jsonl, TensorBoard, loss.png, progress), validate, checkpoint with retention;
6. write ``OUT/final`` (HF layout with the tokenizer) and return it.

Written here rather than on a trainer library because exact resumption (data-loader state, RNG,
step-pure LR), the paper's loss (z-loss over target tokens) and FSDP2 state-dict handling are the
product, and each is a few lines on top of PyTorch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elmforge.data.config import IGNORE_INDEX
from elmforge.data.tokenizer_choice import resolve_tokenizer
from elmforge.errors import CheckpointError, ConfigError, ElmforgeError
from elmforge.files import atomic_directory, atomic_write_text, claim_work_directory, disk_error
from elmforge.layout import RESERVED_NAMES, RunDir, is_run_dir
from elmforge.locks import hold_directory
from elmforge.train import distributed as dist_utils
from elmforge.train.checkpoint import (
    apply_retention,
    capture_rng_state,
    checkpoint_world_size,
    clean_stale_temporaries,
    list_checkpoints,
    load_checkpoint,
    load_resume_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_model_dir,
    step_dir_name,
)
from elmforge.train.config import RunConfig
from elmforge.train.logging import RunLogger
from elmforge.train.mfu import flops_per_token, peak_flops_per_device
from elmforge.train.optim import WarmupCosineSchedule, build_optimizer, loss_sums
from elmforge.train.resume_rules import check_resume_config, check_resume_step

LoaderFactory = Callable[..., Any]


class TrainingDivergedError(ElmforgeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# -- set-up helpers ------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model_config(config: RunConfig, tokenizer: Any) -> Any:
    from elmforge.model.config import OpenELMConfig

    preset = OpenELMConfig.from_name(config.model.name, **config.model.shape)
    if config.seq_len > preset.max_context_length:
        raise ConfigError(
            f"data.seq_len: {config.seq_len} exceeds the model's max_context_length "
            f"{preset.max_context_length} (set model.shape.max_context_length)"
        )
    needed = len(tokenizer)
    vocab = config.model.vocab_size
    if vocab == "auto":
        vocab = -(-needed // 64) * 64  # rows for every token, a multiple of 64 for the matmuls
    elif vocab < needed:
        raise ConfigError(
            f"model.vocab_size: {vocab} is smaller than the tokenizer's {needed} tokens"
        )
    fields = dict(config.model.shape, vocab_size=vocab)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None and value < vocab:
            fields[attr] = value
    return OpenELMConfig.from_name(config.model.name, **fields)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(config: RunConfig, device: torch.device) -> str:
    precision = config.train.precision
    if precision == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16_ok else "fp32"
    return precision


def _default_loader_factory(
    config: RunConfig, tokenizer: Any, tokenizer_spec: str, env: dist_utils.DistEnv
) -> Callable[[str], Any]:
    from elmforge.data.loader import RowSlice, build_train_loader

    data_config = dataclasses.replace(config.data, tokenizer=tokenizer_spec)

    def make(split: str) -> Any:
        workers = config.train.num_workers if split == "train" else 0
        # Validation always reads one stream that every rank slices: the same held-out rows
        # whatever the process count, and any error (say, too few documents) on every rank
        # alike, so no rank is left waiting in a collective.
        one_stream = config.train.data_sharding == "global_batch" or split != "train"
        if one_stream and env.is_distributed:
            whole = build_train_loader(
                data_config, tokenizer, config.train.micro_batch_size * env.world_size,
                rank=0, world_size=1, num_workers=workers, split=split,
            )  # fmt: skip
            return RowSlice(whole, env.rank, config.train.micro_batch_size)
        return build_train_loader(
            data_config, tokenizer, config.train.micro_batch_size,
            rank=env.rank, world_size=env.world_size, num_workers=workers, split=split,
        )  # fmt: skip

    return make


# -- the run ----------------------------------------------------------------------------------------
def pretrain(
    config: RunConfig,
    out_dir: str | Path,
    *,
    loader_factory: Callable[[str], Any] | None = None,
    tokenizer: Any = None,
    force_resume: bool = False,
) -> Path:
    """Train per ``config`` into ``out_dir``; resume automatically; return ``out_dir/final``.

    ``loader_factory(split) -> loader`` and ``tokenizer`` replace the data pipeline (tests,
    custom data); a loader is an iterator of ``{"input_ids", "labels"}`` (B, S) batches whose
    labels are the next tokens (-100 ignored), with ``state_dict()``/``load_state_dict()``.

    ``out_dir`` is new, empty, or a run directory (resumed). Resuming compares ``config`` with the
    run's ``config.yaml`` (:mod:`elmforge.train.resume_rules`): a change that breaks exact
    resumption is refused unless ``force_resume``.
    """
    out_dir = Path(out_dir)
    if not is_run_dir(out_dir):
        claim_work_directory(out_dir, RESERVED_NAMES, "a run directory")
    # One writer per run directory (a second process on the same --out refuses at once); a
    # directory made for the lock goes again if the run fails before writing anything.
    with hold_directory(out_dir, "pretrain"):
        return _pretrain_held(config, out_dir, loader_factory, tokenizer, force_resume)


def _pretrain_held(
    config: RunConfig,
    out_dir: Path,
    loader_factory: Callable[[str], Any] | None,
    tokenizer: Any,
    force_resume: bool,
) -> Path:
    forced = {}
    checkpoints = list_checkpoints(out_dir)
    if checkpoints:
        worlds = (checkpoint_world_size(checkpoints[-1]), dist_utils.launcher_world_size())
        forced = check_resume_config(
            RunDir(out_dir).config, config.to_dict(), force_resume, _main_print(), worlds
        )
    env = dist_utils.init_distributed(config.train.device)
    try:
        return _Trainer(config, out_dir, env, loader_factory, tokenizer, bool(forced)).run()
    finally:
        dist_utils.shutdown_distributed()


def _main_print() -> Callable[[str], None]:
    """``print`` on the main process (before the process group exists: by the launcher's rank)."""
    import os

    return print if os.environ.get("RANK", "0") == "0" else (lambda message: None)


class _Trainer:
    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        env: dist_utils.DistEnv,
        loader_factory: Callable[[str], Any] | None,
        tokenizer: Any,
        fresh_data: bool = False,
    ) -> None:
        self.config = config
        self.fresh_data = fresh_data  # resumed with other data (--force-resume): start its stream
        self.out_dir = out_dir
        self.env = env
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        self.run_dir = RunDir(out_dir)
        if env.is_main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise disk_error(out_dir, err) from None
            clean_stale_temporaries(out_dir)
        dist_utils.barrier(env)
        seed_everything(config.seed)
        if tokenizer is None:
            tokenizer, tokenizer_spec = resolve_tokenizer(
                config.data,
                self.run_dir.tokenizer,
                is_main=env.is_main,
                barrier=lambda: dist_utils.barrier(env),
                report=print if env.is_main else (lambda message: None),
            )
        else:
            tokenizer_spec = str(getattr(tokenizer, "name_or_path", "") or "given")
        self.tokenizer = tokenizer
        if loader_factory is None:
            loader_factory = _default_loader_factory(config, tokenizer, tokenizer_spec, env)
        self.loader_factory = loader_factory
        self.grad_accum = config.grad_accum_for(env.world_size)
        self.precision = resolve_precision(config, env.device)

        self.model_config = build_model_config(config, tokenizer)
        from elmforge.model.modeling import OpenELMForCausalLM

        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        model = OpenELMForCausalLM(self.model_config).to(env.device)
        model.train()
        if config.model.activation_checkpointing:
            # transformers 5.24 renamed gradient_checkpointing_enable (kept as a deprecated alias).
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        self.model = dist_utils.shard_model(model, model.transformer.layers, env)
        self.forward = torch.compile(self.model) if config.model.compile else self.model
        self.schedule = WarmupCosineSchedule.from_config(config.optim, config.schedule)
        self.optimizer = build_optimizer(self.model, config.optim, self.schedule.lr(0))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.val_batches: list[dict[str, torch.Tensor]] | None = None
        self.flops_per_token = flops_per_token(self.model_config, config.seq_len)
        self.peak_flops, self.peak_source = peak_flops_per_device(
            config, env.device, self.precision
        )

    # -- checkpoint I/O ------------------------------------------------------------------------
    def _save(
        self, step: int, loader: Any, counters: dict[str, Any], name: str | None = None
    ) -> Path | None:
        env = self.env
        model_state = dist_utils.full_model_state(self.model)
        optimizer_state = dist_utils.full_optimizer_state(self.model, self.optimizer)
        rng_states = dist_utils.all_gather_objects(capture_rng_state(), env)
        data_states = dist_utils.all_gather_objects(loader.state_dict(), env)
        path = None
        if env.is_main:
            trainer_state = {"world_size": env.world_size, "data": data_states, **counters}
            path = save_checkpoint(
                self.out_dir, step, self.model_config, model_state, optimizer_state,
                rng_states, trainer_state, self.tokenizer, name=name,
            )  # fmt: skip
            if name is None:
                apply_retention(self.out_dir, self.config.checkpoint.keep_last)
        dist_utils.barrier(env)
        return path

    def _resume(self, loader: Any, logger_info: Callable[[str], None]) -> dict[str, Any] | None:
        env = self.env
        found, problem = None, None
        if env.is_main:
            try:
                found = load_resume_checkpoint(self.out_dir, logger_info)
            except CheckpointError as err:
                problem = str(err)  # raised on every rank, so none waits in a collective
        path, problem = dist_utils.broadcast_object(
            (str(found[0]) if found else None, problem), env
        )
        if problem is not None:
            raise CheckpointError(problem)
        if path is None:
            return None
        state = found[1] if found else load_checkpoint(Path(path))
        check_resume_step(self.config.schedule.max_steps, int(state["trainer"]["step"]), path)
        dist_utils.load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        trainer = state["trainer"]
        same_world = trainer.get("world_size") == env.world_size
        rank_index = env.rank if same_world else 0
        global_order = self.config.train.data_sharding == "global_batch"
        if (same_world or global_order) and not self.fresh_data:
            loader.load_state_dict(trainer["data"][rank_index])
        rng = state["rng"]
        restore_rng_state(rng[rank_index] if rank_index < len(rng) else rng[0])
        if not same_world:
            data_note = (
                "the data order continues (global_batch sharding)"
                if global_order
                else "the data order restarts: by_rank sharding depends on the process count"
            )
            logger_info(
                f"resuming a {trainer.get('world_size')}-process checkpoint with "
                f"{env.world_size} processes: weights and optimizer state carry over; {data_note}"
            )
        logger_info(f"resumed from {Path(path).relative_to(self.out_dir)} (step {trainer['step']})")
        return trainer

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self, logger_info: Callable[[str], None]) -> float | None:
        cfg = self.config.log
        if cfg.eval_batches <= 0:
            return None
        if self.val_batches is None:
            try:
                loader = self.loader_factory(cfg.eval_split)
                self.val_batches = [next(loader) for _ in range(cfg.eval_batches)]
            except ElmforgeError as err:
                logger_info(f"validation disabled: {err}")
                self.val_batches = []
        if not self.val_batches:
            return None
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in self.val_batches:
            labels = batch["labels"].to(self.env.device)
            with _autocast(self.precision, self.env.device):
                logits = self.forward(input_ids=batch["input_ids"].to(self.env.device)).logits
            ce_sum, _ = loss_sums(logits, labels)
            totals += torch.stack(
                [ce_sum.double().cpu(), (labels != IGNORE_INDEX).sum().double().cpu()]
            )
        self.model.train()
        dist_utils.all_reduce_sum(totals, self.env)
        return float(totals[0] / totals[1]) if totals[1] > 0 else None

    # -- training ------------------------------------------------------------------------------
    def _train_step(self, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float, float]:
        """One optimizer step over ``batches``; returns (loss, z_loss, grad_norm) global means."""
        env, device = self.env, self.env.device
        local_targets = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        targets = dist_utils.all_reduce_sum(
            torch.tensor([local_targets], dtype=torch.float64), env
        ).item()
        if targets == 0:
            raise ElmforgeError("a training step had no target tokens (all labels are -100)")
        # FSDP2 averages gradients over processes, hence the world_size factor.
        scale = env.world_size / targets
        z_weight = self.config.optim.z_loss
        sums = torch.zeros(2, dtype=torch.float64)
        for i, batch in enumerate(batches):
            dist_utils.set_gradient_sync(self.model, i == len(batches) - 1)
            labels = batch["labels"].to(device)
            with _autocast(self.precision, device):
                logits = self.forward(input_ids=batch["input_ids"].to(device)).logits
            ce_sum, z_sum = loss_sums(logits, labels)
            ((ce_sum + z_weight * z_sum) * scale).backward()
            sums += torch.stack([ce_sum.detach().double().cpu(), z_sum.detach().double().cpu()])
        dist_utils.all_reduce_sum(sums, env)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        grad_norm = float(dist_utils.to_local_scalar(grad_norm))
        return float(sums[0] / targets), float(sums[1] / targets), grad_norm

    def run(self) -> Path:
        config, env = self.config, self.env
        max_steps = config.schedule.max_steps
        loader = self.loader_factory("train")
        # Messages before the logger exists (resume reports) go to stdout on rank 0.
        info = print if env.is_main else (lambda message: None)
        trainer = self._resume(loader, info)
        step = int(trainer["step"]) if trainer else 0
        counters: dict[str, Any] = {
            "tokens": 0,
            "skipped_steps": 0,
            "consecutive_nonfinite": 0,
            "elapsed_s": 0.0,
            "interval": {"loss": 0.0, "z_loss": 0.0, "steps": 0},
        }
        if trainer:
            counters.update({k: trainer[k] for k in counters if k in trainer})
        if env.is_main:
            atomic_write_text(self.run_dir.config, config.to_yaml())
        logger = RunLogger(
            self.out_dir, step, max_steps, enabled=env.is_main,
            tensorboard=config.log.tensorboard, plot=config.log.plot, progress=config.log.progress,
        )  # fmt: skip
        if step == 0:
            logger.info(
                f"training {self.model_config.num_parameters_total():,}-parameter "
                f"{config.model.name} for {max_steps} steps: {env.world_size} process(es) x "
                f"{config.train.micro_batch_size} x {self.grad_accum} accumulation x "
                f"{config.seq_len} tokens, {self.precision} on {env.device.type}; "
                f"MFU peak: {self.peak_source}"
            )
        session_start = time.monotonic()
        elapsed_before = float(counters["elapsed_s"])
        if step == 0 and config.log.eval_batches > 0:
            # The initial model's validation loss: the baseline the curve is read against.
            initial = self._validate(logger.info)
            if initial is not None:
                logger.log({"step": 0, "val_loss": initial, "val_ppl": math.exp(min(initial, 700.0)),
                            "lr": self.schedule.lr(0), "tokens": 0, "elapsed_s": 0.0})  # fmt: skip
        interval_start, interval_tokens, interval_steps = time.monotonic(), 0, 0
        last_saved = step if trainer else -1
        tokens_per_step = 0
        try:
            self.schedule.apply(self.optimizer, step)
            while step < max_steps:
                lr = self.schedule.lr(step)
                batches = [next(loader) for _ in range(self.grad_accum)]
                step_tokens = sum(b["input_ids"].numel() for b in batches) * env.world_size
                loss, z_loss, grad_norm = self._train_step(batches)
                finite = math.isfinite(loss) and math.isfinite(grad_norm)
                if finite:
                    self.optimizer.step()
                    counters["consecutive_nonfinite"] = 0
                else:
                    counters["skipped_steps"] += 1
                    counters["consecutive_nonfinite"] += 1
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                self.schedule.apply(self.optimizer, step)
                counters["tokens"] += step_tokens
                tokens_per_step = step_tokens
                interval_tokens += step_tokens
                interval_steps += 1
                if finite:
                    counters["interval"]["loss"] += loss
                    counters["interval"]["z_loss"] += z_loss
                    counters["interval"]["steps"] += 1
                else:
                    logger.info(
                        f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'}"
                        f" (loss {loss}, grad norm {grad_norm}); step skipped "
                        f"({counters['consecutive_nonfinite']} in a row)"
                    )
                logger.advance()
                counters["elapsed_s"] = elapsed_before + time.monotonic() - session_start

                if counters["consecutive_nonfinite"] >= config.train.max_nonfinite_steps:
                    # Kept for inspection under another name: a re-run (say with a lower
                    # optim.lr) resumes from the last good step-* checkpoint, and retention
                    # never trades a good checkpoint for this one.
                    path = self._save(
                        step, loader, counters, name=f"diverged-{step_dir_name(step)}"
                    )
                    raise TrainingDivergedError(
                        f"stopped at step {step}: {counters['consecutive_nonfinite']} steps in a "
                        f"row had a non-finite loss or gradient (train.max_nonfinite_steps="
                        f"{config.train.max_nonfinite_steps}; last loss {loss}, grad norm "
                        f"{grad_norm}, lr {lr:.3g}); checkpoint saved at "
                        f"{path or self.run_dir.checkpoints}; lower optim.lr or check the data"
                    )
                eval_due = step == max_steps or (
                    config.log.eval_every > 0 and step % config.log.eval_every == 0
                )
                val_loss = self._validate(logger.info) if eval_due else None
                if step % config.log.log_every == 0 or eval_due:
                    now = time.monotonic()
                    seconds = max(now - interval_start, 1e-9)
                    tokens_per_s = interval_tokens / seconds
                    interval = counters["interval"]
                    record: dict[str, Any] = {
                        "step": step,
                        "loss": interval["loss"] / interval["steps"] if interval["steps"] else None,
                        "z_loss": interval["z_loss"] / interval["steps"] if interval["steps"] else None,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": counters["tokens"],
                        "tokens_per_s": tokens_per_s,
                        "mfu": tokens_per_s * self.flops_per_token
                        / (self.peak_flops * env.world_size),
                        "elapsed_s": counters["elapsed_s"],
                        "eta_s": (max_steps - step) * seconds / interval_steps,
                        "skipped_steps": counters["skipped_steps"],
                    }  # fmt: skip
                    if val_loss is not None:
                        record["val_loss"] = val_loss
                        record["val_ppl"] = math.exp(min(val_loss, 700.0))
                    logger.log(record)
                    counters["interval"] = {"loss": 0.0, "z_loss": 0.0, "steps": 0}
                    interval_start, interval_tokens, interval_steps = time.monotonic(), 0, 0
                if step % config.checkpoint.save_every == 0 or step == max_steps:
                    saved = self._save(step, loader, counters)
                    last_saved = step
                    if saved is not None:
                        logger.info(f"step {step}: checkpoint {saved.relative_to(self.out_dir)}")
            if last_saved != step:  # resumed at max_steps from an older layout: nothing to redo
                self._save(step, loader, counters)
            final = self._write_final()
            if env.is_main:
                logger.info(
                    f"done: {step} steps, {counters['tokens']:,} tokens "
                    f"({tokens_per_step:,} per step), {counters['skipped_steps']} skipped; "
                    f"final model in {final}"
                )
            return final
        finally:
            logger.close()

    def _write_final(self) -> Path:
        final = self.run_dir.final
        model_state = dist_utils.full_model_state(self.model)
        if self.env.is_main:
            with atomic_directory(final) as tmp:
                save_model_dir(self.model_config, model_state, tmp, self.tokenizer)
        dist_utils.barrier(self.env)
        return final
