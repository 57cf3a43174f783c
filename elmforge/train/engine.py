"""The training engine: one loop for every objective (pretraining's causal LM, fine-tuning's SFT
and DPO), from one CPU process to many GPU processes under ``torchrun``.

A *task* (:class:`Task`) says what the run computes: what a batch is, its loss and metrics, what
is evaluated, how its trainable state is saved and loaded (a whole model, or a PEFT adapter), and
what the final output is. The engine does the rest, once for every verb:

- the run directory: stale temporaries of a killed run removed, ``config.yaml`` written;
- resumption from the newest intact checkpoint (falling back past damaged ones): the trainable
  state, the AdamW state, the step, every rank's data-loader state and RNG states, so a continued
  run is bit-for-bit the uninterrupted one on CPU fp32;
- the step: ``grad_accum`` micro-batches per process, the loss summed and divided by the count of
  the whole step over all processes (target tokens, pairs: the task's *units*), so P processes x B
  give the gradient of 1 process x P*B; gradient sync on the last micro-batch only; clipping;
  AdamW; the LR of step s a pure function of s. A non-finite loss or gradient skips the step;
  ``train.max_nonfinite_steps`` in a row save a checkpoint and stop with a clear message;
- metrics.jsonl / TensorBoard / loss.png / progress (:mod:`elmforge.train.logging`), evaluation
  at ``log.eval_every`` and at the end, checkpoints every ``checkpoint.save_every`` with
  retention, and the final output.

Checks of a resumed config against the run's (:mod:`elmforge.train.resume_rules`) happen before
the engine starts: :func:`check_resume`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from elmforge.errors import CheckpointError, ElmforgeError
from elmforge.files import atomic_write_text, disk_error
from elmforge.layout import RunDir, is_run_dir, step_dir_name
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
)
from elmforge.train.logging import RunLogger
from elmforge.train.optim import WarmupCosineSchedule, build_optimizer
from elmforge.train.resume_rules import (
    PRETRAINING,
    ResumeRules,
    check_resume_config,
    check_resume_step,
)

Batch = dict[str, Any]


class TrainingDivergedError(ElmforgeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class Task(Protocol):
    """What a training run computes; the engine calls these, on every rank."""

    model: torch.nn.Module
    """The module trained (sharded under FSDP2); its parameters that require grad are what the
    optimizer updates."""
    metric_names: tuple[str, ...]
    """The per-step metrics of :meth:`loss_sums` (``loss`` first), means over the logged steps."""
    global_order: bool
    """The data order does not depend on the process count (resumable on another count)."""
    flops_per_token: float | None
    peak_flops: float

    def units(self, batch: Batch) -> int:
        """What the step's loss is a mean over, in this micro-batch (target tokens, pairs)."""

    def tokens(self, batch: Batch) -> int:
        """Tokens this micro-batch reads (throughput)."""

    def loss_sums(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss summed over the batch's units, to backpropagate; each metric summed over
        them, detached)."""

    def evaluate(self) -> dict[str, float] | None:
        """Held-out metrics (a collective call), or None where there is nothing to score."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) trainable state on CPU: a collective call, real on rank 0."""

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`write_model` wrote (as ``load_checkpoint`` read it), on every rank."""

    def write_model(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        """Write ``state`` as a checkpoint's ``model/`` (rank 0)."""

    def write_final(self) -> Path:
        """Write the run's outputs (``final/``, a PEFT run's ``adapter/``); a collective call."""

    def describe(self, env: dist_utils.DistEnv, grad_accum: int, max_steps: int) -> str:
        """The run's first log line."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision`` ``bf16`` (fp32 master weights), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_activation_checkpointing(model: Any, reentrant: bool | None = None) -> None:
    """Recompute each decoder layer's activations in the backward pass (``reentrant``: torch's
    checkpoint variant, None for transformers' default; a model with frozen inputs, a PEFT
    run's, needs the non-reentrant one)."""
    options = None if reentrant is None else {"use_reentrant": reentrant}
    # transformers 5.24 renamed gradient_checkpointing_enable (kept as a deprecated alias).
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def main_print() -> Callable[[str], None]:
    """``print`` on the main process (before the process group exists: by the launcher's rank)."""
    return print if os.environ.get("RANK", "0") == "0" else (lambda message: None)


def check_resume(
    out_dir: Path,
    current: dict[str, Any],
    force_resume: bool,
    rules: ResumeRules = PRETRAINING,
    without_checkpoints: bool = False,
) -> bool:
    """Compare ``current`` with the config of the run in ``out_dir`` (if it has checkpoints; with
    ``without_checkpoints`` any run directory); return whether changes that break exact
    resumption were let through by ``force_resume`` (the data stream then starts afresh)."""
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints and not (without_checkpoints and is_run_dir(out_dir)):
        return False
    launched = dist_utils.launcher_world_size()
    worlds = (checkpoint_world_size(checkpoints[-1]) if checkpoints else launched, launched)
    forced = check_resume_config(
        RunDir(out_dir).config, current, force_resume, main_print(), worlds, rules
    )
    return bool(forced)


def run_in_process_group(
    out_dir: Path,
    device: str,
    num_threads: int,
    build: Callable[[dist_utils.DistEnv], Engine],
    verb: str,
) -> Path:
    """Join the process group (when launched by torchrun), build the engine and run it, holding
    ``out_dir`` (one writer per run directory: a second process on the same --out refuses at
    once; torchrun's other ranks take no lock); a run that failed before writing anything leaves
    no directory behind."""
    with hold_directory(out_dir, verb):
        return _run_in_process_group(out_dir, device, num_threads, build)


def _run_in_process_group(
    out_dir: Path, device: str, num_threads: int, build: Callable[[dist_utils.DistEnv], Engine]
) -> Path:
    existed = out_dir.exists()
    env = dist_utils.init_distributed(device)
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return build(env).run()
    except BaseException:
        if not existed and env.is_main and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    finally:
        dist_utils.shutdown_distributed()


def prepare_run_dir(out_dir: Path, env: dist_utils.DistEnv) -> None:
    """Create ``out_dir`` and remove what a killed run left half-written (main process)."""
    if env.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(out_dir, err) from None
        clean_stale_temporaries(out_dir)
    dist_utils.barrier(env)


class Engine:
    """One run of ``task`` into ``out_dir``; ``config`` has the shared sections ``optim``,
    ``train``, ``checkpoint`` and ``log``."""

    def __init__(
        self,
        config: Any,
        out_dir: Path,
        env: dist_utils.DistEnv,
        task: Task,
        loader: Any,
        schedule: WarmupCosineSchedule,
        grad_accum: int,
        config_text: str,
        fresh_data: bool = False,
        eval_every: int = 0,
        keep_best: tuple[str, str] | None = None,
    ) -> None:
        self.config, self.out_dir, self.env, self.task = config, Path(out_dir), env, task
        self.run_dir = RunDir(out_dir)
        self.loader, self.schedule, self.grad_accum = loader, schedule, grad_accum
        self.config_text = config_text
        self.fresh_data = fresh_data  # resumed with other data (--force-resume): start its stream
        self.eval_every = eval_every
        self.keep_best = keep_best  # (metric, "min" or "max"): kept as checkpoints/best
        self.optimizer = build_optimizer(task.model, config.optim, schedule.lr(0))
        self.params = [p for p in task.model.parameters() if p.requires_grad]

    # -- checkpoint I/O ------------------------------------------------------------------------
    def _save(self, step: int, counters: dict[str, Any], name: str | None = None) -> Path | None:
        env, task = self.env, self.task
        model_state = task.trainable_state()
        optimizer_state = dist_utils.full_optimizer_state(task.model, self.optimizer)
        rng_states = dist_utils.all_gather_objects(capture_rng_state(), env)
        data_states = dist_utils.all_gather_objects(self.loader.state_dict(), env)
        path = None
        if env.is_main:
            trainer_state = {"world_size": env.world_size, "data": data_states, **counters}
            path = save_checkpoint(
                self.out_dir, step, lambda directory: task.write_model(model_state, directory),
                optimizer_state, rng_states, trainer_state, name=name,
            )  # fmt: skip
            if name is None:
                apply_retention(self.out_dir, self.config.checkpoint.keep_last)
        dist_utils.barrier(env)
        return path

    def _resume(self, info: Callable[[str], None]) -> dict[str, Any] | None:
        env = self.env
        found, problem = None, None
        if env.is_main:
            try:
                found = load_resume_checkpoint(self.out_dir, info)
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
        check_resume_step(self.schedule.max_steps, int(state["trainer"]["step"]), path)
        self.task.load_trainable_state(state["model"])
        dist_utils.load_optimizer_state(self.task.model, self.optimizer, state["optimizer"])
        trainer = state["trainer"]
        same_world = trainer.get("world_size") == env.world_size
        rank_index = env.rank if same_world else 0
        global_order = self.task.global_order
        if (same_world or global_order) and not self.fresh_data:
            self.loader.load_state_dict(trainer["data"][rank_index])
        rng = state["rng"]
        restore_rng_state(rng[rank_index] if rank_index < len(rng) else rng[0])
        if not same_world:
            data_note = (
                "the data order continues (global_batch sharding)"
                if global_order
                else "the data order restarts: by_rank sharding depends on the process count"
            )
            info(
                f"resuming a {trainer.get('world_size')}-process checkpoint with "
                f"{env.world_size} processes: weights and optimizer state carry over; {data_note}"
            )
        info(f"resumed from {Path(path).relative_to(self.out_dir)} (step {trainer['step']})")
        return trainer

    # -- one step ------------------------------------------------------------------------------
    def gradients(self, batches: list[Batch]) -> tuple[dict[str, float], float, int]:
        """One optimizer step's gradients over ``batches``: (metric means over the whole step,
        grad norm, tokens read by every process)."""
        env, task = self.env, self.task
        local = torch.tensor(
            [sum(task.units(b) for b in batches), sum(task.tokens(b) for b in batches)],
            dtype=torch.float64,
        )
        units, tokens = dist_utils.all_reduce_sum(local, env).tolist()
        if units == 0:
            raise ElmforgeError("a training step had nothing to train on (all labels are -100)")
        # FSDP2 averages gradients over processes, hence the world_size factor.
        scale = env.world_size / units
        sums = torch.zeros(len(task.metric_names), dtype=torch.float64)
        for i, batch in enumerate(batches):
            dist_utils.set_gradient_sync(task.model, i == len(batches) - 1)
            loss_sum, metric_sums = task.loss_sums(batch)
            (loss_sum * scale).backward()
            sums += torch.stack([metric_sums[k].detach().double().cpu() for k in task.metric_names])
        dist_utils.all_reduce_sum(sums, env)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        grad_norm = float(dist_utils.to_local_scalar(grad_norm))
        means = {k: float(v / units) for k, v in zip(task.metric_names, sums)}
        return means, grad_norm, int(tokens)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> Path:
        config, env, task = self.config, self.env, self.task
        max_steps = self.schedule.max_steps
        # Messages before the logger exists (resume reports) go to stdout on rank 0.
        info = print if env.is_main else (lambda message: None)
        trainer = self._resume(info)
        step = int(trainer["step"]) if trainer else 0
        counters: dict[str, Any] = {
            "tokens": 0,
            "skipped_steps": 0,
            "consecutive_nonfinite": 0,
            "elapsed_s": 0.0,
            "interval": self._fresh_interval(),
            "best": None,
        }
        if trainer:
            counters.update({k: trainer[k] for k in counters if k in trainer})
        if env.is_main:
            atomic_write_text(self.run_dir.config, self.config_text)
        log = config.log
        trackers = None
        if env.is_main and set(log.report_to) - {"tensorboard"}:
            from elmforge.train.tracking import Trackers

            trackers = Trackers(self.out_dir, log.report_to, yaml.safe_load(self.config_text))
        logger = RunLogger(
            self.out_dir, step, max_steps, enabled=env.is_main, trackers=trackers,
            tensorboard=log.tensorboard and "tensorboard" in log.report_to, plot=log.plot,
            progress=log.progress,
        )  # fmt: skip
        final = None
        try:
            if step == 0:
                logger.info(task.describe(env, self.grad_accum, max_steps))
            final = self._train(step, trainer is not None, counters, logger)
            return final
        finally:
            logger.close(final)

    def _improves(self, evaluation: dict[str, float], counters: dict[str, Any]) -> bool:
        """Whether ``evaluation`` beats the best so far of the kept metric (recorded if so)."""
        if self.keep_best is None or evaluation.get(self.keep_best[0]) is None:
            return False
        value, best = evaluation[self.keep_best[0]], counters["best"]
        if not math.isfinite(value):
            return False
        better = best is None or (value < best if self.keep_best[1] == "min" else value > best)
        if better:
            counters["best"] = value
        return better

    def _fresh_interval(self) -> dict[str, float]:
        return {**dict.fromkeys(self.task.metric_names, 0.0), "steps": 0}

    def _train(self, step: int, resumed: bool, counters: dict[str, Any], logger: RunLogger) -> Path:
        config, env, task = self.config, self.env, self.task
        max_steps = self.schedule.max_steps
        session_start = time.monotonic()
        elapsed_before = float(counters["elapsed_s"])
        if step == 0 and getattr(config.log, "eval_batches", 1) > 0:
            # The initial model's held-out metrics: the baseline the curve is read against.
            initial = task.evaluate()
            if initial is not None:
                logger.log({"step": 0, **initial, "lr": self.schedule.lr(0), "tokens": 0,
                            "elapsed_s": 0.0})  # fmt: skip
        interval_start, interval_tokens, interval_steps = time.monotonic(), 0, 0
        last_saved = step if resumed else -1
        tokens_per_step = 0
        self.schedule.apply(self.optimizer, step)
        while step < max_steps:
            lr = self.schedule.lr(step)
            batches = [next(self.loader) for _ in range(self.grad_accum)]
            metrics, grad_norm, step_tokens = self.gradients(batches)
            loss = metrics[task.metric_names[0]]
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
                for key, value in metrics.items():
                    counters["interval"][key] += value
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
                # Kept for inspection under another name: a re-run (say with a lower optim.lr)
                # resumes from the last good step-* checkpoint, and retention never trades a
                # good checkpoint for this one.
                path = self._save(step, counters, name=f"diverged-{step_dir_name(step)}")
                raise TrainingDivergedError(
                    f"stopped at step {step}: {counters['consecutive_nonfinite']} steps in a "
                    f"row had a non-finite loss or gradient (train.max_nonfinite_steps="
                    f"{config.train.max_nonfinite_steps}; last loss {loss}, grad norm "
                    f"{grad_norm}, lr {lr:.3g}); checkpoint saved at "
                    f"{path or self.run_dir.checkpoints}; lower optim.lr or check the data"
                )
            every = self.eval_every
            eval_due = step == max_steps or (every > 0 and step % every == 0)
            # Evaluating (held-out rows, lm-eval tasks) is no training: its time stays out of
            # tokens_per_s and eta_s.
            eval_started = time.monotonic()
            evaluation = task.evaluate() if eval_due else None
            interval_start += time.monotonic() - eval_started
            if evaluation is not None and self._improves(evaluation, counters):
                self._save(step, counters, name="best")
                logger.info(f"step {step}: best {self.keep_best[0]} so far, in checkpoints/best")
            if step % config.log.log_every == 0 or eval_due:
                now = time.monotonic()
                seconds = max(now - interval_start, 1e-9)
                tokens_per_s = interval_tokens / seconds
                interval = counters["interval"]
                done = interval["steps"]
                record: dict[str, Any] = {"step": step}
                for key in task.metric_names:
                    record[key] = interval[key] / done if done else None
                record.update({
                    "lr": lr, "grad_norm": grad_norm, "tokens": counters["tokens"],
                    "tokens_per_s": tokens_per_s,
                })  # fmt: skip
                if task.flops_per_token is not None:
                    record["mfu"] = (tokens_per_s * task.flops_per_token
                                     / (task.peak_flops * env.world_size))  # fmt: skip
                record.update({
                    "elapsed_s": counters["elapsed_s"],
                    "eta_s": (max_steps - step) * seconds / interval_steps,
                    "skipped_steps": counters["skipped_steps"],
                })  # fmt: skip
                record.update(evaluation or {})
                logger.log(record)
                counters["interval"] = self._fresh_interval()
                interval_start, interval_tokens, interval_steps = time.monotonic(), 0, 0
            if step % config.checkpoint.save_every == 0 or step == max_steps:
                saved = self._save(step, counters)
                last_saved = step
                if saved is not None:
                    logger.info(f"step {step}: checkpoint {saved.relative_to(self.out_dir)}")
        if last_saved != step:  # resumed at max_steps from an older layout: nothing to redo
            self._save(step, counters)
        final = task.write_final()
        if env.is_main:
            logger.info(
                f"done: {step} steps, {counters['tokens']:,} tokens "
                f"({tokens_per_step:,} per step), {counters['skipped_steps']} skipped; "
                f"final model in {final}"
            )
        return final
