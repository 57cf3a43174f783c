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
"""

from __future__ import annotations

import itertools
import math
import os
import string
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmforge.data.config import IGNORE_INDEX, DataConfig, load_data_config
from elmforge.data.sources import (
    BadRow,
    ResolvedSource,
    ShardFailure,
    decode_row,
    iter_rows,
    iter_shard_rows,
    iter_texts,
    resolve_source,
)
from elmforge.errors import ConfigError, DataError, ElmforgeError

STATE_VERSION = 1


# --- documents -> tokens ---------------------------------------------------------------------

_PUNCTUATION = {
    cp: None
    for cp in range(sys.maxunicode + 1)
    if unicodedata.category(chr(cp)).startswith("P") or chr(cp) in string.punctuation
}


def processed_length(text: str) -> int:
    """Length of SPEC.md's processed form: lower-cased, punctuation removed, whitespace collapsed."""
    return len(" ".join(text.lower().translate(_PUNCTUATION).split()))


class DocumentProcessor:
    """NFC, the two OpenELM filters, word chunking and batched tokenisation."""

    def __init__(self, tokenizer: Any, config: DataConfig):
        self.config = config
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise DataError("tokenizer: needs a bos and an eos token")
        pad = tokenizer.pad_token_id
        # Pad positions only ever reach the model as inputs after the document's end (causal
        # attention never lets real tokens see them) and their labels are IGNORE_INDEX, so any
        # valid id works; eos keeps it inside the embedding when the tokenizer has no pad.
        self.pad_id = pad if pad is not None and pad < len(tokenizer) else self.eos_id
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._tokenizer = tokenizer
        # Chunks split at a space: SentencePiece-style tokenizers re-create the space as the next
        # chunk's word-start marker, byte-level ones need it kept at the chunk's start. Pick
        # whichever reproduces whole-text tokenisation.
        whole = self._encode_one("ab cd")
        self._chunk_keeps_space = self._encode_one("ab") + self._encode_one("cd") != whole

    def _encode_one(self, text: str) -> list[int]:
        # One text without encode_batch: probing must not start the Rust thread pool before
        # DataLoader workers fork (tokenizers would then disable parallelism with a warning).
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _chunks(self, text: str) -> list[str]:
        """Word chunks of about ``chunk_characters`` characters, cut only at a single space
        between two words, which keeps the tokens of the whole text (see ``__init__``)."""
        size = self.config.chunk_characters
        if len(text) <= size:
            return [text]
        chunks, start = [], 0
        skip = 0 if self._chunk_keeps_space else 1
        while len(text) - start > size:
            cut = text.find(" ", start + size)
            while cut != -1 and (
                cut + 1 == len(text) or text[cut - 1].isspace() or text[cut + 1].isspace()
            ):
                cut = text.find(" ", cut + 1)
            if cut == -1:
                break
            chunks.append(text[start:cut])
            start = cut + skip
        chunks.append(text[start:])
        return chunks

    def process(self, texts: Sequence[str]) -> list[np.ndarray | str]:
        """For each text its ``[bos] + tokens + [eos]`` (int32) or the name of the filter that dropped it."""
        results: list[np.ndarray | str] = []
        pending: list[tuple[int, int, int]] = []  # (result index, first chunk, chunk count)
        chunks: list[str] = []
        for text in texts:
            if not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
            if processed_length(text) < self.config.min_characters:
                results.append("dropped_min_characters")
                continue
            parts = self._chunks(text)
            pending.append((len(results), len(chunks), len(parts)))
            chunks.extend(parts)
            results.append("")
        encoded = self._encode(chunks)
        for index, first, count in pending:
            ids = [t for chunk in encoded[first : first + count] for t in chunk]
            if len(ids) < self.config.min_tokens:
                results[index] = "dropped_min_tokens"
                continue
            tokens = np.empty(len(ids) + 2, dtype=np.int32)
            tokens[0], tokens[-1] = self.bos_id, self.eos_id
            tokens[1:-1] = ids
            results[index] = tokens
        return results


# --- one source as seen by one reader --------------------------------------------------------

READ_STATS = ("documents", "dropped_min_characters", "dropped_min_tokens", "bad_rows")
EMIT_STATS = ("sequences", "tokens", "padding_tokens")


# One tag per use of randomness: numpy's SeedSequence ignores trailing zeros, so untagged keys of
# different lengths ((seed, source) and (seed, source, 0, 0)) would share one stream.
_RNG_TAGS = {"shard_assignment": 101, "shard_order": 202, "block_shuffle": 303, "mixing": 404}


def _rng(purpose: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([_RNG_TAGS[purpose], *(int(k) for k in key)])


class SourceStream:
    """The endless, shuffled document stream of one source for one reader."""

    def __init__(
        self,
        source: ResolvedSource,
        source_index: int,
        processor: DocumentProcessor,
        config: DataConfig,
        slot: int,
        readers: int,
        stats: dict[str, int],
        missing: Sequence[str] = (),
    ):
        self.source = source
        self.source_index = source_index
        self.processor = processor
        self.config = config
        self.slot = slot
        self.readers = readers
        self.stats = stats  # shared with the reader, counted when a block is first read
        self.missing = set(missing)
        self.row_striding = len(source.shards) < readers
        self.block: list[np.ndarray] = []
        self.j = 0
        self.loaded = False
        self.block_index = 0
        self.block_start = {"epoch": 0, "shard": 0, "row": 0, "offset": None}
        self.epoch_documents = 0
        self.epoch_bad_rows = 0
        self._rows: Iterator[tuple[Any, dict]] | None = None

    def _epoch_shards(self, epoch: int) -> list[tuple[int, Any]]:
        """(canonical index, shard) in the order this reader reads them in ``epoch``.

        File level: the reader owns a fixed share of the shards (every ``readers``-th of one
        seeded order), read in a new seeded order each epoch, so no two readers ever see the
        same document. Row level (fewer shards than readers): every shard, in a new order each
        epoch; the reader keeps the rows with ``(row + shard index) % readers == slot``.
        """
        count = len(self.source.shards)
        if self.row_striding:
            mine = list(range(count))
        else:
            mine = list(
                _rng("shard_assignment", self.config.seed, self.source_index).permutation(count)
            )
            mine = mine[self.slot :: self.readers]
        order = _rng(
            "shard_order", self.config.seed, self.source_index, self.slot, epoch
        ).permutation(len(mine))
        return [(int(mine[i]), self.source.shards[mine[i]]) for i in order]

    def _iter_rows(self, position: dict) -> Iterator[tuple[Any, dict]]:
        """(item, position after it) from ``position``; item is (shard, row, payload), a BadRow,
        or None at the end of an epoch."""
        epoch, cursor, row, offset = (position[k] for k in ("epoch", "shard", "row", "offset"))
        while True:
            shards = self._epoch_shards(epoch)
            while cursor < len(shards):
                shard_index, shard = shards[cursor]
                for index, offset_after, payload in iter_shard_rows(shard, row, offset):
                    keep = (
                        not self.row_striding or (index + shard_index) % self.readers == self.slot
                    )
                    if isinstance(payload, ShardFailure):
                        problem = payload.problem
                        if shard.path in self.missing:
                            problem = "missing shard"
                        if keep:
                            after = {"epoch": epoch, "shard": cursor + 1, "row": 0, "offset": None}
                            yield BadRow(shard, index, problem), after
                        break
                    if keep:
                        after = {
                            "epoch": epoch,
                            "shard": cursor,
                            "row": index + 1,
                            "offset": offset_after,
                        }
                        yield (shard, index, payload), after
                cursor, row, offset = cursor + 1, 0, None
            epoch, cursor = epoch + 1, 0
            yield None, {"epoch": epoch, "shard": 0, "row": 0, "offset": None}

    def _load_block(self, count: bool) -> None:
        """Read the block at ``block_start``; ``count``: first time (update stats), not a restore."""
        if self._rows is None:
            self._rows = self._iter_rows(self.block_start)
        texts: list[str] = []
        bad: list[BadRow] = []
        end_of_epoch = False
        position = self.block_start
        for item, after in self._rows:
            position = after
            if item is None:
                end_of_epoch = True
                break
            if isinstance(item, BadRow):
                bad.append(item)
            else:
                text = decode_row(*item)
                if isinstance(text, BadRow):
                    bad.append(text)
                else:
                    texts.append(text)
            if len(texts) + len(bad) >= self.config.shuffle_buffer:
                break
        kept: list[np.ndarray] = []
        for result in self.processor.process(texts):
            if isinstance(result, str):
                if count:
                    self.stats[result] += 1
            else:
                kept.append(result)
        if count:
            limit = self.config.max_bad_rows
            if self.epoch_bad_rows + len(bad) > limit:
                first_over = bad[limit - self.epoch_bad_rows]  # name the row that broke the limit
                raise DataError(
                    f"{first_over.message()} (more than max_bad_rows={limit} bad rows in a pass "
                    f"over {self.source.name})"
                )
            self.stats["bad_rows"] += len(bad)
            self.epoch_bad_rows += len(bad)
            self.epoch_documents += len(kept)
        epoch = self.block_start["epoch"]
        order = _rng(
            "block_shuffle", self.config.seed, self.source_index, self.slot, epoch, self.block_index
        )
        self.block = [kept[i] for i in order.permutation(len(kept))]
        self.loaded = True
        self.j = 0
        self._next_start = position
        self._block_ends_epoch = end_of_epoch

    def _advance_block(self) -> None:
        if self._block_ends_epoch:
            if self.epoch_documents == 0:
                raise DataError(self._empty_message())
            self.block_index = 0
            self.epoch_documents = 0
            self.epoch_bad_rows = 0
        else:
            self.block_index += 1
        self.block_start = self._next_start
        self.loaded = False

    def _empty_message(self) -> str:
        where = f"reader {self.slot} of {self.readers}" if self.readers > 1 else "the reader"
        return (
            f"{self.source.name}: no documents left for {where} after the filters "
            f"(min_characters={self.config.min_characters}, min_tokens={self.config.min_tokens};"
            f" {self.stats['dropped_min_characters']} + {self.stats['dropped_min_tokens']}"
            f" dropped, {self.stats['bad_rows']} bad rows)"
        )

    def next_document(self) -> np.ndarray:
        for _ in range(1_000_000):
            if not self.loaded:
                self._load_block(count=True)
            if self.j < len(self.block):
                self.j += 1
                return self.block[self.j - 1]
            self._advance_block()
        raise DataError(self._empty_message())

    def state_dict(self) -> dict[str, Any]:
        return {
            "block_start": dict(self.block_start),
            "block_index": self.block_index,
            "j": self.j,
            "loaded": self.loaded,
            "epoch_documents": self.epoch_documents,
            "epoch_bad_rows": self.epoch_bad_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.block_start = dict(state["block_start"])
        self.block_index = state["block_index"]
        self._rows = None
        self.epoch_documents = state["epoch_documents"]
        self.epoch_bad_rows = state["epoch_bad_rows"]
        self.loaded = False
        self.j = 0
        if state["loaded"]:
            self._load_block(count=False)
            self.j = state["j"]


# --- one reader: mixing, sequences, batches --------------------------------------------------

MIX_BLOCK = 4096


class Reader:
    """The sequences of one (rank, worker) reader; ``state_dict`` is taken between sequences."""

    def __init__(
        self,
        sources: Sequence[tuple[ResolvedSource, Sequence[str]]],
        processor: DocumentProcessor,
        config: DataConfig,
        slot: int,
        readers: int,
    ):
        self.config = config
        self.processor = processor
        self.slot = slot
        self.length = config.seq_len + 1
        self.read_stats = dict.fromkeys(READ_STATS, 0)
        self.emit_stats = dict.fromkeys(EMIT_STATS, 0)
        self.streams = [
            SourceStream(source, i, processor, config, slot, readers, self.read_stats, missing)
            for i, (source, missing) in enumerate(sources)
        ]
        weights = np.array([s.weight for s, _ in sources], dtype=np.float64)
        self._cumulative = np.cumsum(weights / weights.sum())
        self.k = 0
        self.current: np.ndarray | None = None
        self.offset = 0
        self._mix_block = -1
        self._mix_uniforms = np.empty(0)
        self._snapshot: dict[str, Any] = {}

    def _choose_stream(self, k: int) -> int:
        if len(self.streams) == 1:
            return 0
        if k // MIX_BLOCK != self._mix_block:
            self._mix_block = k // MIX_BLOCK
            self._mix_uniforms = _rng(
                "mixing", self.config.seed, self.slot, self._mix_block
            ).random(MIX_BLOCK)
        index = int(
            np.searchsorted(self._cumulative, self._mix_uniforms[k % MIX_BLOCK], side="right")
        )
        return min(index, len(self.streams) - 1)

    def _pull(self) -> None:
        self._snapshot = self._position()
        stream = self.streams[self._choose_stream(self.k)]
        self.current = stream.next_document()
        self.k += 1
        self.offset = 0
        self.read_stats["documents"] += 1

    def _position(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "streams": [s.state_dict() for s in self.streams],
            "read_stats": dict(self.read_stats),
        }

    def next_sequence(self) -> tuple[np.ndarray, int]:
        """``seq_len + 1`` token ids and how many of them are real (the rest is padding)."""
        piece = np.full(self.length, self.processor.pad_id, dtype=np.int64)
        filled = 0
        while filled < self.length:
            if self.current is None:
                if filled and self.config.mode == "padding":
                    break
                self._pull()
            assert self.current is not None
            take = min(self.length - filled, len(self.current) - self.offset)
            piece[filled : filled + take] = self.current[self.offset : self.offset + take]
            filled += take
            self.offset += take
            if self.offset == len(self.current):
                self.current = None
        self.emit_stats["sequences"] += 1
        self.emit_stats["tokens"] += filled
        self.emit_stats["padding_tokens"] += self.length - filled
        return piece, filled

    def next_batch(self, size: int) -> dict[str, np.ndarray]:
        pieces, real = zip(*(self.next_sequence() for _ in range(size)))
        tokens = np.stack(pieces)
        labels = tokens[:, 1:].copy()
        positions = np.arange(labels.shape[1])
        labels[positions[None, :] >= np.array(real)[:, None] - 1] = IGNORE_INDEX
        return {"input_ids": tokens[:, :-1], "labels": labels}

    def state_dict(self) -> dict[str, Any]:
        position = self._snapshot if self.current is not None else self._position()
        return {
            **position,
            "offset": self.offset if self.current is not None else 0,
            "has_current": self.current is not None,
            "emit_stats": dict(self.emit_stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["streams"]) != len(self.streams):
            raise DataError("data state: the number of sources differs from the config's")
        for stream, stream_state in zip(self.streams, state["streams"]):
            stream.load_state_dict(stream_state)
        self.k = state["k"]
        self.read_stats.update(state["read_stats"])
        self.emit_stats.update(state["emit_stats"])
        self.current = None
        self.offset = 0
        if state["has_current"]:
            self._pull()
            self.offset = state["offset"]

    def stats(self) -> dict[str, int]:
        return {**self.read_stats, **self.emit_stats}


# --- the loader: ranks, DataLoader workers, consumed state -----------------------------------


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
        return {**totals, "padding_fraction": _padding_fraction(totals)}


def _copy_json(state: dict) -> dict:
    import json

    return json.loads(json.dumps(state))


def _padding_fraction(totals: dict[str, int]) -> float:
    all_tokens = totals["tokens"] + totals["padding_tokens"]
    return totals["padding_tokens"] / all_tokens if all_tokens else 0.0


def unshifted_labels(batch: dict[str, Any]) -> Any:
    """Labels aligned with ``input_ids`` (for a ``forward(labels=...)`` that shifts itself):
    the input ids with padding set to -100. The piece's last token is not a target then."""
    labels = batch["input_ids"].clone()
    labels[:, 1:][batch["labels"][:, :-1] == IGNORE_INDEX] = IGNORE_INDEX
    return labels


def _resolve_all(config: DataConfig, split: str) -> list[tuple[ResolvedSource, list[str]]]:
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
        _resolve_all(config, split),
        micro_batch_size,
        rank,
        world_size,
        num_workers,
        split,
    )
    return TrainLoader(plan)


# --- inspect ---------------------------------------------------------------------------------


def inspect(
    config: DataConfig,
    max_documents: int | None = None,
    split: str = "train",
    tokenizer: Any = None,
    samples: int = 3,
) -> dict[str, Any]:
    """Per source: documents kept, what each filter dropped, bad rows, tokens, sequences and the
    padding fraction ``config.mode`` gives, over one pass (the first ``max_documents`` rows),
    plus ``samples`` decoded sequences. Returns ``{"sources": [...], "total": {...}}``."""
    resolved = _resolve_all(config, split)  # a source without files is reported first
    if tokenizer is None:
        from elmforge.data.tokenizer_choice import resolve_tokenizer

        tokenizer, _ = resolve_tokenizer(config)
    processor = DocumentProcessor(tokenizer, config)
    length = config.seq_len + 1
    reports = []
    for source, missing in resolved:
        counts = dict.fromkeys(READ_STATS + EMIT_STATS, 0)
        counts["bad_rows"] = len(missing)
        head: list[int] = []  # the first tokens, for the decoded samples
        rows = iter_rows(source, split, config.max_bad_rows, missing)
        if max_documents is not None:
            rows = itertools.islice(rows, max_documents)
        for block in _batched(rows, config.shuffle_buffer):
            texts = []
            for row in block:
                if isinstance(row, BadRow):
                    counts["bad_rows"] += 1
                else:
                    texts.append(row)
            for result in processor.process(texts):
                if isinstance(result, str):
                    counts[result] += 1
                    continue
                counts["documents"] += 1
                counts["tokens"] += len(result)
                pieces = math.ceil(len(result) / length)
                if config.mode == "padding":
                    counts["sequences"] += pieces
                    counts["padding_tokens"] += pieces * length - len(result)
                    if len(head) < samples * length:
                        head.extend(result.tolist() + [None] * (pieces * length - len(result)))
                elif len(head) < samples * length:
                    head.extend(result.tolist())
        if config.mode == "packing":
            counts["sequences"] = counts["tokens"] // length
        texts = []
        for i in range(0, min(len(head), samples * length), length):
            ids = [t for t in head[i : i + length] if t is not None]
            if len(head) - i >= length or config.mode == "padding":
                texts.append(tokenizer.decode(ids, skip_special_tokens=False))
        reports.append(
            {
                "source": source.name,
                **counts,
                "padding_fraction": _padding_fraction(counts),
                "samples": texts,
            }
        )
    total = {key: sum(r[key] for r in reports) for key in READ_STATS + EMIT_STATS}
    total["padding_fraction"] = _padding_fraction(total)
    return {"sources": reports, "total": total, "mode": config.mode, "seq_len": config.seq_len}


def _batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while block := list(itertools.islice(iterator, size)):
        yield block


# --- configs and reports for the CLI --------------------------------------------------------


def iter_training_texts(
    data: str | os.PathLike, split: str = "train", max_documents: int | None = None
) -> Iterator[str]:
    """Documents of a YAML data config's sources (in turn) or of one source spec string."""
    if str(data).endswith((".yaml", ".yml")):
        config = load_data_config(data)
        sources, max_bad_rows = config.sources_for(split), config.max_bad_rows
    else:
        sources, max_bad_rows = [str(data)], 0
    texts = itertools.chain.from_iterable(iter_texts(s, split, max_bad_rows) for s in sources)
    return itertools.islice(texts, max_documents)


def format_inspect_report(report: dict[str, Any], sample_chars: int = 300) -> str:
    """The Markdown table (and decoded samples) that ``elmforge data inspect`` prints."""
    columns = ["documents", "dropped_min_characters", "dropped_min_tokens", "bad_rows", "tokens"]
    columns += ["sequences", "padding_fraction"]
    lines = [
        f"mode {report['mode']}, seq_len {report['seq_len']}",
        "",
        "| source | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in [*report["sources"], {"source": "**total**", **report["total"]}]:
        cells = [f"{row[c]:.4f}" if c == "padding_fraction" else f"{row[c]:,}" for c in columns]
        lines.append(f"| {row['source']} | " + " | ".join(cells) + " |")
    for source in report["sources"]:
        for i, sample in enumerate(source.get("samples", [])):
            shown = sample if len(sample) <= sample_chars else sample[:sample_chars] + " [...]"
            lines += ["", f"sample {i + 1} of {source['source']}:", shown]
    return "\n".join(lines) + "\n"
