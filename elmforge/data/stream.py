"""What one reader sees: each source's shuffled document stream, mixed into sequences.

A *reader* is one (rank, DataLoader worker) pair (see :mod:`elmforge.data.loader` for how the
stream as a whole is built and why its state is exact). :class:`SourceStream` is one source as
one reader sees it (its shards or rows, read a block at a time and shuffled within the block);
:class:`Reader` mixes the sources by weight and cuts the documents into packed or padded
sequences. Both describe their position with a few integers (``state_dict``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from elmforge.data.config import IGNORE_INDEX, DataConfig
from elmforge.data.documents import DocumentProcessor
from elmforge.data.sources import (
    BadRow,
    ResolvedSource,
    ShardFailure,
    decode_row,
    iter_shard_rows,
)
from elmforge.errors import DataError

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


# --- one reader: mixing, sequences, batches ------------------------------------------------

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


def padding_fraction(totals: dict[str, int]) -> float:
    """Padding tokens over all tokens of ``totals`` (a dict with ``tokens`` and ``padding_tokens``)."""
    all_tokens = totals["tokens"] + totals["padding_tokens"]
    return totals["padding_tokens"] / all_tokens if all_tokens else 0.0
