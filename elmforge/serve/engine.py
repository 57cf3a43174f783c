"""The server's model engine: a key/value cache in slots and the two steps run over it.

The cache is preallocated per layer as (slots, kv heads, capacity, head dim): slot ``s`` is one
sequence, its tokens at positions ``0 .. length - 1`` of its own row. A sequence joins by taking
a free slot and leaves by giving it back; nobody else's keys and values move (no per-step
concatenation, no re-padding). The capacity grows by doubling (a bucket, as ``generate``'s static
cache) only when a sequence outgrows it, which is rare and amortised.

- :meth:`SlotEngine.prefill` writes a run of one sequence's tokens (a whole prompt, a chunk of one,
  or the rest after a cached prefix) at its current length and returns their logits;
- :meth:`SlotEngine.decode` advances every decoding slot by one token in one forward over the
  slot range ``0 .. hi - 1``. Slots in that range that are free or still prefilling ride along
  on a scratch position (their next write overwrites it), so the batch is a plain slice of the
  cache, never a gathered copy; new sequences take the lowest free slot to keep it short.

The layers are driven directly (embedding, each ``OpenELMDecoderLayer`` with this cache, final
norm, head), so masks and positions are per row: a row attends to its own positions only and
its positions count from 0, exactly as when it decodes alone. The linear layers take elmforge's
CPU decode kernels inside the layers as in ``generate`` (1 to 8 rows).
"""

from __future__ import annotations

from typing import Any

import torch

from elmforge.model.decoding import cache_bucket
from elmforge.serve.adapters import BASE, rows_with_adapters


class _SlotView:
    """What the attention layers call ``update`` on for one forward: writes the new keys and
    values into the slot cache and returns the rows' keys and values up to ``width``."""

    def __init__(self, engine: SlotEngine, rows: slice, width: int, write: Any) -> None:
        self.engine, self.rows, self.width, self.write = engine, rows, width, write

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stored_keys, stored_values = self.engine.keys[layer_idx], self.engine.values[layer_idx]
        self.write(stored_keys, keys)
        self.write(stored_values, values)
        return (
            stored_keys[self.rows, :, : self.width],
            stored_values[self.rows, :, : self.width],
        )


class SlotEngine:
    """A model (``OpenELMForCausalLM``) with a slot cache of ``slots`` sequences."""

    def __init__(self, model: Any, slots: int, capacity: int = 256, adapters: Any = None) -> None:
        body = model.transformer
        self.model, self.body, self.slots = model, body, slots
        self.limit = int(getattr(model.config, "max_context_length", 0)) or None
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.kv_heads = [layer.attn.num_kv_heads for layer in body.layers]
        self.head_dim = body.layers[0].attn.head_dim
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = [0] * slots  # tokens cached per slot
        self.adapters = adapters  # a PEFT model holding per-request adapters, or None
        self.adapter_of = [BASE] * slots  # each slot's adapter (serve/adapters.py)
        self._grow(min(capacity, self.limit or capacity))

    # -- memory ----------------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        def bigger(old: torch.Tensor | None, heads: int) -> torch.Tensor:
            shape = (self.slots, heads, capacity, self.head_dim)
            new = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if old is not None:
                new[:, :, : old.shape[2]] = old
            return new

        olds = zip(
            self.keys or [None] * len(self.kv_heads), self.values or [None] * len(self.kv_heads)
        )
        grown = [(bigger(k, h), bigger(v, h)) for (k, v), h in zip(olds, self.kv_heads)]
        self.keys = [k for k, _ in grown]
        self.values = [v for _, v in grown]
        self.capacity = capacity

    def ensure(self, length: int) -> None:
        """Room for ``length`` positions per slot (a power-of-two bucket, at most the context
        unless a longer length is asked for)."""
        if length > self.capacity:
            self._grow(cache_bucket(length, self.limit))

    def bytes_per_token(self) -> int:
        return sum(2 * h * self.head_dim for h in self.kv_heads) * self.keys[0].element_size()

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.adapter_of[slot] = BASE

    def load_prefix(
        self, slot: int, prefix: list[tuple[torch.Tensor, torch.Tensor]], length: int
    ) -> None:
        """Put the first ``length`` positions of ``prefix`` (per layer (K, L, D) keys and values,
        from :meth:`read_prefix`) into ``slot``, which then holds ``length`` tokens."""
        self.ensure(length + 1)
        for layer, (keys, values) in enumerate(prefix):
            self.keys[layer][slot, :, :length] = keys[:, :length]
            self.values[layer][slot, :, :length] = values[:, :length]
        self.lengths[slot] = length

    def read_prefix(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of ``slot``'s first ``length`` positions, per layer (keys, values)."""
        return [
            (k[slot, :, :length].clone(), v[slot, :, :length].clone())
            for k, v in zip(self.keys, self.values)
        ]

    # -- steps -----------------------------------------------------------------------------
    def _run(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: Any, view: _SlotView, keep: int
    ) -> torch.Tensor:
        if self.adapters is None:
            return self._layers(ids, positions, mask, view, keep)
        with rows_with_adapters(self.adapters, self.adapter_of[view.rows]):
            return self._layers(ids, positions, mask, view, keep)

    def _layers(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: Any, view: _SlotView, keep: int
    ) -> torch.Tensor:
        hidden = self.body.token_embeddings(ids)
        rope = self.body.rotary(positions, view.width)
        for layer in self.body.layers:
            hidden = layer(hidden, rope, mask, view)
        hidden = self.body.norm(hidden if keep == 0 else hidden[:, -keep:])
        return self.model.lm_head(hidden).float()

    def prefill(self, slot: int, tokens: list[int], all_logits: bool = False) -> torch.Tensor:
        """Run ``tokens`` after what ``slot`` holds; their logits (len(tokens), vocab), or only
        the last position's (1, vocab)."""
        start, count = self.lengths[slot], len(tokens)
        end = start + count
        self.ensure(end + 1)  # + 1: the scratch position of a ride-along decode step
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        mask = None  # nothing cached: plain causal attention (SDPA's fastest kernels)
        if start:
            keys = torch.arange(end, device=self.device)
            mask = (keys[None, :] <= positions[0][:, None])[None, None]  # (1, 1, S, T)

        def write(stored: torch.Tensor, new: torch.Tensor) -> None:
            stored[slot, :, start:end] = new[0]

        view = _SlotView(self, slice(slot, slot + 1), end, write)
        logits = self._run(ids, positions, mask, view, keep=0 if all_logits else 1)
        self.lengths[slot] = end
        return logits[0]

    def decode(self, tokens: dict[int, int]) -> torch.Tensor:
        """One step: ``tokens`` maps each decoding slot to its next input token. Returns logits
        (hi, vocab) indexed by slot (rows of slots not in ``tokens`` are meaningless)."""
        hi = max(tokens) + 1
        starts = torch.tensor(self.lengths[:hi], device=self.device)  # the positions written
        self.ensure(int(starts.max()) + 1)
        width = int(starts.max()) + 1
        ids = torch.zeros(hi, 1, dtype=torch.long, device=self.device)
        for slot, token in tokens.items():
            ids[slot, 0] = token
        keys = torch.arange(width, device=self.device)
        mask = (keys[None, :] <= starts[:, None])[:, None, None, :]  # (hi, 1, 1, T)
        rows = torch.arange(hi, device=self.device)

        def write(stored: torch.Tensor, new: torch.Tensor) -> None:
            stored[rows, :, starts] = new[:, :, 0]

        view = _SlotView(self, slice(0, hi), width, write)
        logits = self._run(ids, starts[:, None], mask, view, keep=1)[:, -1]
        for slot in tokens:
            self.lengths[slot] += 1
        return logits

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Build and load the CPU kernels and run each step once, so no request pays for it."""
        if self.device.type == "cpu":
            from elmforge.model import cpu_kernels

            cpu_kernels.load_kernels()
        slot = 0
        self.prefill(slot, [1, 2, 3, 4])
        for token in (5, 6):
            self.decode({slot: token})
        self.release(slot)
