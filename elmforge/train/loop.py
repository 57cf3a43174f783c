"""Pretraining: ``pretrain(config, out_dir)``, the causal-LM task on the training engine.

The engine (:mod:`elmforge.train.engine`) runs the loop, checkpoints, resumption, logging and
processes; this module says what pretraining computes:

1. resolve the tokenizer (``elmforge.data.tokenizer_choice``: a trained BPE is kept in
   ``OUT/tokenizer``) and build the model (FSDP2-sharded when distributed; optional activation
   checkpointing and ``torch.compile``);
2. a batch is ``{"input_ids", "labels"}`` from the data pipeline; its loss is the summed
   cross-entropy + z-loss over the target tokens (``train.optim.loss_sums``), the units the
   engine divides by are the target tokens;
3. validation loss on the held-out split; checkpoints hold the whole model (HF layout with the
   tokenizer); ``OUT/final`` is the model in HF layout.

Written here rather than on a trainer library because exact resumption (data-loader state, RNG,
step-pure LR), the paper's loss (z-loss over target tokens) and FSDP2 state-dict handling are the
product, and each is a few lines on top of PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from elmforge.data.config import IGNORE_INDEX
from elmforge.data.tokenizer_choice import resolve_tokenizer
from elmforge.errors import ElmforgeError
from elmforge.files import atomic_directory, claim_work_directory
from elmforge.layout import RESERVED_NAMES, RunDir, is_run_dir
from elmforge.runtime import training_precision
from elmforge.train import distributed as dist_utils
from elmforge.train.config import RunConfig
from elmforge.train.engine import (
    Engine,
    TrainingDivergedError,
    autocast,
    check_resume,
    enable_activation_checkpointing,
    prepare_run_dir,
    run_in_process_group,
    seed_everything,
)
from elmforge.train.mfu import flops_per_token, peak_flops_per_device
from elmforge.train.optim import WarmupCosineSchedule, loss_sums
from elmforge.train.tracking import check_trackers

__all__ = ["TrainingDivergedError", "pretrain", "resolve_precision"]


# -- set-up helpers ------------------------------------------------------------------------------
def resolve_precision(config: RunConfig, device: torch.device) -> str:
    return training_precision(config.train.precision, device)


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
    check_trackers(config.log.report_to)
    if not is_run_dir(out_dir):
        claim_work_directory(out_dir, RESERVED_NAMES, "a run directory")
    # The resume rules only read the run: a refused change is said first, even while another
    # process writes the run (and several refused commands never contend for it).
    forced = check_resume(out_dir, config.to_dict(), force_resume)
    build = _engine_builder(config, out_dir, loader_factory, tokenizer, forced)
    return run_in_process_group(
        out_dir, config.train.device, config.train.num_threads, build, "pretrain"
    )


def _engine_builder(
    config: RunConfig,
    out_dir: Path,
    loader_factory: Callable[[str], Any] | None,
    tokenizer: Any,
    forced: Any,
) -> Callable[[dist_utils.DistEnv], Engine]:
    def build(env: dist_utils.DistEnv) -> Engine:
        prepare_run_dir(out_dir, env)
        seed_everything(config.seed)
        task = CausalLMTask(config, out_dir, env, loader_factory, tokenizer)
        schedule = WarmupCosineSchedule.from_config(config.optim, config.schedule)
        return Engine(config, out_dir, env, task, task.loader_factory("train"), schedule,
                      config.grad_accum_for(env.world_size), config.to_yaml(),
                      fresh_data=forced, eval_every=config.log.eval_every)  # fmt: skip

    return build


class CausalLMTask:
    """Pretraining's task: next-token cross-entropy + z-loss over the data pipeline's batches."""

    metric_names = ("loss", "z_loss")

    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        env: dist_utils.DistEnv,
        loader_factory: Callable[[str], Any] | None,
        tokenizer: Any,
    ) -> None:
        self.config, self.env = config, env
        self.run_dir = RunDir(out_dir)
        self.global_order = config.train.data_sharding == "global_batch"
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
        self.precision = resolve_precision(config, env.device)

        self.model_config = config.model_config(tokenizer)
        from elmforge.model.modeling import OpenELMForCausalLM

        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        model = OpenELMForCausalLM(self.model_config).to(env.device)
        model.train()
        if config.model.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.model = dist_utils.shard_model(model, model.transformer.layers, env)
        self.forward = torch.compile(self.model) if config.model.compile else self.model
        self.val_batches: list[dict[str, torch.Tensor]] | None = None
        self.flops_per_token = flops_per_token(self.model_config, config.seq_len)
        self.peak_flops, self.peak_source = peak_flops_per_device(
            config, env.device, self.precision
        )

    def describe(self, env: dist_utils.DistEnv, grad_accum: int, max_steps: int) -> str:
        config = self.config
        return (
            f"training {self.model_config.num_parameters_total():,}-parameter "
            f"{config.model.name} for {max_steps} steps: {env.world_size} process(es) x "
            f"{config.train.micro_batch_size} x {grad_accum} accumulation x "
            f"{config.seq_len} tokens, {self.precision} on {env.device.type}; "
            f"MFU peak: {self.peak_source}"
        )

    # -- batches -------------------------------------------------------------------------------
    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(self.precision, self.env.device):
            return self.forward(input_ids=batch["input_ids"].to(self.env.device)).logits

    def loss_sums(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce_sum, z_sum = loss_sums(self._logits(batch), batch["labels"].to(self.env.device))
        total = ce_sum + self.config.optim.z_loss * z_sum
        return total, {"loss": ce_sum.detach(), "z_loss": z_sum.detach()}

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        cfg = self.config.log
        if cfg.eval_batches <= 0:
            return None
        if self.val_batches is None:
            try:
                loader = self.loader_factory(cfg.eval_split)
                self.val_batches = [next(loader) for _ in range(cfg.eval_batches)]
            except ElmforgeError as err:
                if self.env.is_main:
                    print(f"validation disabled: {err}", flush=True)
                self.val_batches = []
        if not self.val_batches:
            return None
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in self.val_batches:
            labels = batch["labels"].to(self.env.device)
            ce_sum, _ = loss_sums(self._logits(batch), labels)
            totals += torch.stack(
                [ce_sum.double().cpu(), (labels != IGNORE_INDEX).sum().double().cpu()]
            )
        self.model.train()
        dist_utils.all_reduce_sum(totals, self.env)
        if totals[1] <= 0:
            return None
        val_loss = float(totals[0] / totals[1])
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}

    # -- state ---------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return dist_utils.full_model_state(self.model)

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        dist_utils.load_full_state(self.model, None, state, None)

    def write_model(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        from elmforge.modeldir.save import save_model_dir

        save_model_dir(self.model_config, state, directory, self.tokenizer)

    def write_final(self) -> Path:
        final = self.run_dir.final
        model_state = dist_utils.full_model_state(self.model)
        if self.env.is_main:
            with atomic_directory(final) as tmp:
                self.write_model(model_state, tmp)
        dist_utils.barrier(self.env)
        return final
