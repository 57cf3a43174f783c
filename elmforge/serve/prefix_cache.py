"""Prefix caching: the keys and values of prompts already read, reused by later prompts that
start the same way (a system prompt, few-shot examples, a chat's earlier turns, a repeated
prompt).

An entry is one prompt's keys and values (per layer (kv heads, length, head dim), copied out of
its slot once the prompt is read). A new prompt takes the entry sharing its longest prefix, copies
that many positions into its slot and reads only the rest: keys and values at a position depend
only on the tokens up to it, so the result is what reading the whole prompt gives (tested token
for token). The cache holds at most ``max_bytes``; the least recently used entries go first.
Entries live on the model's device, beside the slot cache. They are kept per adapter
(``namespace``): an adapter changes the keys and values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_bytes: int, bytes_per_token: int) -> None:
        self.max_bytes, self.bytes_per_token = max_bytes, bytes_per_token
        self._entries: OrderedDict[tuple[Any, ...], KeysValues] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int], namespace: Any = None) -> tuple[int, KeysValues | None]:
        """(tokens found, their keys and values) for the longest cached prefix of ``prompt``,
        leaving at least its last token to read (its logits pick the first new token)."""
        best, found = 0, None
        for key, entry in self._entries.items():
            if key[0] != namespace:
                continue
            length = common_prefix(key[1:], prompt)
            if length > best:
                best, found = length, (key, entry)
        best = min(best, len(prompt) - 1)
        if found is None or best <= 0:
            return 0, None
        self._entries.move_to_end(found[0])
        return best, found[1]

    def store(
        self, prompt: list[int], read: Callable[[int], KeysValues], namespace: Any = None
    ) -> None:
        """Keep ``prompt``'s keys and values (``read(length)`` copies them out) unless it is
        cached already or larger than the whole cache; evict the least recently used to fit."""
        key = (namespace, *prompt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = len(prompt) * self.bytes_per_token
        if size > self.max_bytes or not prompt:
            return
        while self.bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted[0][0].shape[1] * self.bytes_per_token
        self._entries[key] = read(len(prompt))
        self.bytes += size
