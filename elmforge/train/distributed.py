"""Process groups and FSDP2 sharding, through PyTorch's own engine.

``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``) starts the
processes; we join the group (NCCL on GPUs, gloo on CPU) and shard the model with FSDP2's
``fully_shard``, one unit per decoder layer plus the root (embedding, final norm, tied head).
Full (unsharded) state dicts for checkpoints come from ``torch.distributed.checkpoint``'s helpers,
so a checkpoint written by N processes loads in M.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from elmforge.errors import CheckpointError, first_line
from elmforge.runtime import pick_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_world_size() -> int:
    """The process count the launcher (torchrun) set, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world_size = launcher_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = pick_device(device, option="train.device").startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=30),
            device_id=dev if use_cuda else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_model(model: nn.Module, layers: nn.ModuleList, env: DistEnv) -> nn.Module:
    """FSDP2: each decoder layer its own unit, then the root (keeps the tied weight together).
    Frozen parameters (a PEFT run's base, a DPO reference) are sharded alike: FSDP2 keeps
    parameters that train and parameters that do not in one unit."""
    if not env.is_distributed:
        return model
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip FSDP2's reduce-scatter on all but the last micro-batch of an accumulation."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(enabled)


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.is_distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable, small), in rank order."""
    if not env.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded model state on CPU (rank 0 only under FSDP; a collective call); with
    ``trainable_only`` the parameters that train only (a PEFT adapter), keyed by their names in
    ``model``."""
    if not trainable_only:
        return get_model_state_dict(model, options=_FULL)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(model, options=options).items() if k in names}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state keyed by parameter name (rank 0 only; collective)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    trainable_only: bool = False,
) -> None:
    """Load full state dicts (every rank passes the same full dicts) into a possibly sharded
    model; with ``trainable_only`` the state holds the parameters that train only."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    try:
        result = set_model_state_dict(model, model_state, options=options)
    except RuntimeError as err:  # shapes differ: another model than the run's
        lines = str(err).splitlines()
        detail = next((line.strip() for line in lines if "size mismatch" in line), first_line(err))
        raise CheckpointError(
            f"the checkpoint does not fit this model (changed model settings?): {detail}"
        ) from None
    # Not strict only because a tied head is stored once, under the embedding's name.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        tied = set()
    if trainable_only:
        tied |= {name for name, p in model.named_parameters() if not p.requires_grad}
        tied |= {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            "the checkpoint does not fit this model (changed model settings?): "
            f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def to_local_scalar(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's grad norm) as a plain replicated tensor."""
    full = getattr(value, "full_tensor", None)
    return full() if full is not None else value


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any]
) -> None:
    """Load a full (unsharded, keyed by parameter name) optimizer state; every rank passes it."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
