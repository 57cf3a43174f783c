"""Documents -> NFC -> OpenELM's filters -> tokens -> packed or padded sequences -> batches.

This pipeline is part of the product (a researcher must be able to trust it with a 350k-step
run), so it is written here rather than borrowed: what it guarantees is exact resumption.

How the stream is built
    * **Readers.** Every (rank, DataLoader worker) pair is one *reader*, ``slot = rank *
      workers + worker`` out of ``readers = world_size * workers``. Each epoch, a source's
      shards are put in an order seeded by ``(seed, source, epoch)`` (the same on every
      reader); with at least as many shards as readers each reader takes every
      ``readers``-th shard of that order, otherwise every reader walks all shards and keeps
      every ``readers``-th row (row-level striding for one big file). So no two readers ever
      see the same document, and together they see all of them.
    * **Shuffling.** A reader reads ``shuffle_buffer`` rows at a time (a *block*), filters and
      tokenises them in one batch call of the Rust tokenizer, and emits the kept documents in
      an order seeded by ``(seed, source, slot, epoch, block)``. Memory is bounded by one block.
    * **Mixing.** With several sources, the source of a reader's k-th document is drawn with
      the sources' weights from a counter-based generator seeded by ``(seed, slot, k)``.
    * **Sequences.** Each document is ``[bos] + tokens + [eos]``. ``packing`` concatenates
      documents and cuts the stream into pieces of ``seq_len + 1`` tokens; ``padding`` puts one
      document per piece (a longer one continues in the next piece) and pads the rest.
    * **State.** Everything above is a function of a few integers, so a reader's state is its
      position: per source the block's start (epoch, shard, row, byte offset) and the index in
      the block, the mixing counter, and the token offset in the current document. Restoring
      re-reads at most one block (from a parquet row group or a jsonl byte offset, not from
      the shard's start). With DataLoader workers, batches come from the workers in round-robin
      order; each batch carries its worker's state, and the loader's state is the state of
      what the main process has *consumed* (not what workers prefetched), plus which worker is
      next. A restored loader re-labels its workers so that order continues exactly.

Modules: :mod:`elmforge.data.documents` (NFC, filters, tokenisation), :mod:`elmforge.data.stream`
(one reader's sources and sequences), this one (ranks, workers, consumed state), and
:mod:`elmforge.data.inspect` (``elmforge data inspect``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from elmforge.data.config import IGNORE_INDEX, DataConfig
from elmforge.data.documents import DocumentProcessor
from elmforge.data.sources import ResolvedSource, resolve_source
from elmforge.data.stream import EMIT_STATS, READ_STATS, Reader, padding_fraction
from elmforge.errors import ConfigError, DataError, ElmforgeError

STATE_VERSION = 1


@dataclass
class _Plan:
    """Everything a reader needs (picklable, sent to DataLoader workers)."""

    config: DataConfig
    tokenizer: Any
    sources: list[tuple[ResolvedSource, list[str]]]
    micro_batch_size: int
    rank: int
    world_size: int
    num_workers: int
    split: str

    @property
    def workers(self) -> int:
        return max(self.num_workers, 1)


def _reader_batches(plan: _Plan, worker: int, state: dict | None) -> Iterator[dict[str, Any]]:
    import torch

    processor = DocumentProcessor(plan.tokenizer, plan.config)
    reader = Reader(
        plan.sources,
        processor,
        plan.config,
        slot=plan.rank * plan.workers + worker,
        readers=plan.world_size * plan.workers,
    )
    if state is not None:
        reader.load_state_dict(state)
    while True:
        batch = reader.next_batch(plan.micro_batch_size)
        yield {
            "input_ids": torch.from_numpy(batch["input_ids"]),
            "labels": torch.from_numpy(batch["labels"]),
            "worker": worker,
            "state": reader.state_dict(),
        }


def _identity(item: Any) -> Any:
    return item


class _WorkerDataset:
    """The IterableDataset run by DataLoader workers; worker ``i`` plays reader
    ``(i + first_worker) % workers`` so a restored loader continues the round-robin order."""

    def __init__(self, plan: _Plan, states: list[dict | None], first_worker: int):
        self.plan, self.states, self.first_worker = plan, states, first_worker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = ((info.id if info else 0) + self.first_worker) % self.plan.workers
        try:
            yield from _reader_batches(self.plan, worker, self.states[worker])
        except ElmforgeError as err:
            # Re-raised by the main process as itself: a one-line message, not a worker traceback.
            yield {"error": type(err).__name__, "message": str(err), "worker": worker}


_ERRORS = {cls.__name__: cls for cls in (ElmforgeError, DataError, ConfigError)}


class TrainLoader:
    """An endless iterator of training batches with an exact, resumable state.

    Each batch is ``{"input_ids": LongTensor[B, seq_len], "labels": LongTensor[B, seq_len]}``
    cut from pieces of ``seq_len + 1`` tokens: ``input_ids = piece[:-1]`` and
    ``labels = piece[1:]``, i.e. **labels are already shifted**: ``labels[b, i]`` is the token
    that must follow ``input_ids[b, i]``, and padding positions hold -100. Compute the loss as
    ``cross_entropy(model(input_ids=batch["input_ids"]).logits.flatten(0, 1),
    batch["labels"].flatten(), ignore_index=-100)``. Do not pass these labels to a Hugging Face
    ``forward(labels=...)``, which shifts again; :func:`unshifted_labels` gives that form.

    ``state_dict()`` (small, JSON-serialisable) describes what has been *consumed*;
    ``load_state_dict(state)`` on a loader built with the same config, rank, world size and
    worker count makes it yield exactly the batches the original would have yielded next.
    """

    def __init__(self, plan: _Plan):
        self._plan = plan
        self._states: list[dict | None] = [None] * plan.workers
        self._next_worker = 0
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._dataloader: Any = None

    def __iter__(self) -> TrainLoader:
        return self

    def _start(self) -> Iterator[dict[str, Any]]:
        plan = self._plan
        if plan.num_workers == 0:
            dataset = _WorkerDataset(plan, self._states, 0)
            return iter(dataset)
        from torch.utils.data import DataLoader, IterableDataset

        class _Dataset(_WorkerDataset, IterableDataset):
            pass

        self._dataloader = DataLoader(
            _Dataset(plan, list(self._states), self._next_worker),
            batch_size=None,
            num_workers=plan.num_workers,
            collate_fn=_identity,
            prefetch_factor=2,
        )
        return iter(self._dataloader)

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._start()
        item = next(self._iterator)
        if "error" in item:
            self.close()
            raise _ERRORS.get(item["error"], ElmforgeError)(item["message"])
        worker = item["worker"]
        self._states[worker] = item["state"]
        self._next_worker = (worker + 1) % self._plan.workers
        return {"input_ids": item["input_ids"], "labels": item["labels"]}

    def close(self) -> None:
        """Stop the DataLoader workers (a later ``next`` starts them again from the state)."""
        self._iterator = None
        self._dataloader = None

    def _identity_fields(self) -> dict[str, Any]:
        plan = self._plan
        return {
            "rank": plan.rank,
            "world_size": plan.world_size,
            "num_workers": plan.num_workers,
            "micro_batch_size": plan.micro_batch_size,
            "seq_len": plan.config.seq_len,
            "mode": plan.config.mode,
            "seed": plan.config.seed,
            "split": plan.split,
            "sources": [s.name for s, _ in plan.sources],
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            **self._identity_fields(),
            "next_worker": self._next_worker,
            "workers": [None if s is None else _copy_json(s) for s in self._states],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"data state: not a version-{STATE_VERSION} data-loader state")
        for key, expected in self._identity_fields().items():
            if state.get(key) != expected:
                raise DataError(
                    f"data state: {key} was {state.get(key)!r}, this loader has {expected!r}; "
                    "resume with the same data config, ranks and workers"
                )
        self.close()
        self._states = [None if s is None else _copy_json(s) for s in state["workers"]]
        self._next_worker = int(state["next_worker"])

    @property
    def stats(self) -> dict[str, float]:
        """Counts over what has been consumed: documents, filter drops, bad rows, tokens..."""
        totals = dict.fromkeys(READ_STATS + EMIT_STATS, 0)
        for state in self._states:
            if state is not None:
                for key in READ_STATS:
                    totals[key] += state["read_stats"][key]
                for key in EMIT_STATS:
                    totals[key] += state["emit_stats"][key]
        return {**totals, "padding_fraction": padding_fraction(totals)}


def _copy_json(state: dict) -> dict:
    return json.loads(json.dumps(state))


def unshifted_labels(batch: dict[str, Any]) -> Any:
    """Labels aligned with ``input_ids`` (for a ``forward(labels=...)`` that shifts itself):
    the input ids with padding set to -100. The piece's last token is not a target then."""
    labels = batch["input_ids"].clone()
    labels[:, 1:][batch["labels"][:, :-1] == IGNORE_INDEX] = IGNORE_INDEX
    return labels


def resolve_sources(config: DataConfig, split: str) -> list[tuple[ResolvedSource, list[str]]]:
    """Resolve every source now, so a pattern without files fails before training starts."""
    key = "validation_sources" if split == "validation" and config.validation_sources else "sources"
    resolved = []
    for i, spec in enumerate(config.sources_for(split)):
        source, missing = resolve_source(spec, split, f"data.{key}[{i}]")
        if len(missing) > config.max_bad_rows:
            raise DataError(
                f"{missing[0]}: missing shard ({len(missing)} of {len(source.shards)} in "
                f"{source.name} missing, max_bad_rows={config.max_bad_rows})"
            )
        resolved.append((source, missing))
    return resolved


def build_train_loader(
    config: DataConfig,
    tokenizer: Any,
    micro_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    split: str = "train",
) -> TrainLoader:
    """The endless, sharded, resumable batch iterator of ``rank`` (see :class:`TrainLoader`).

    Sources are resolved here, so a missing file or a pattern matching nothing raises
    ``DataError`` before the first step. Epochs repeat with a new seeded order.
    """
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size: {micro_batch_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank}: must be in [0, world_size={world_size})")
    if num_workers < 0:
        raise ConfigError(f"num_workers: {num_workers} must be >= 0")
    if split not in ("train", "validation"):
        raise ConfigError(f"split: {split!r} must be train or validation")
    DocumentProcessor(tokenizer, config)  # checks bos/eos now, not in a worker
    plan = _Plan(
        config,
        tokenizer,
        resolve_sources(config, split),
        micro_batch_size,
        rank,
        world_size,
        num_workers,
        split,
    )
    return TrainLoader(plan)


class RowSlice:
    """Rows ``[rank*B, (rank+1)*B)`` of every batch of a loader of global batches.

    Every process reads the same stream, so the sequences of an optimizer step, and the loader's
    state, are those of a single process reading ``world_size x B`` rows: the data order does not
    depend on the number of processes (``train.data_sharding: global_batch``).
    """

    def __init__(self, loader: Any, rank: int, rows: int) -> None:
        self.loader, self.start, self.rows = loader, rank * rows, rows

    def __iter__(self) -> RowSlice:
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.loader)
        return {k: v[self.start : self.start + self.rows] for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
