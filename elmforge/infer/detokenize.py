"""Generated tokens to text, piece by piece, with stop strings that never leak.

One :class:`TextAssembler` per generated sequence, used by ``generate``, ``chat`` and every
request of ``serve``, so streaming and stop strings behave the same everywhere:

- Incremental detokenisation (the scheme of vLLM and TGI): each new token is decoded together
  with a few tokens before it and only the difference is emitted, so a SentencePiece token's
  leading space survives (decoding a lone "▁world" gives "world") and a multi-byte character
  split over several byte tokens is held until it is complete (no U+FFFD in the stream). The
  window starts in the prompt, so the first generated token keeps its leading space too.
- Stop strings may span several tokens. Text that could still become a stop string is held
  back while streaming; once a stop string appears, the text before it is final and nothing of
  the stop string is emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Prompt tokens decoded with the first generated ones: enough for any merge that changes how
# the boundary decodes (a leading space, a multi-byte character cut by the prompt's end).
CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextAssembler:
    """Feed token ids with :meth:`push`; it returns the new text that is safe to show."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int] = (),
        stop: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)
        self._decoded = ""  # all text decoded so far (may end in a stop string's beginning)
        self._emitted = 0  # characters of _decoded already returned
        self._searched = 0  # characters of _decoded already searched for stop strings
        self.stop_found: str | None = None
        """The stop string that ended the text, once one has appeared."""

    @property
    def text(self) -> str:
        """The text so far, without any stop string (final once :attr:`stop_found` is set)."""
        return self._decoded

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _new_text(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete character, or a token that decodes to nothing yet
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return after[len(before) :]

    def push(self, token_id: int) -> str:
        """Add one generated token; the text that became final (may be empty)."""
        if self.stop_found is not None:
            return ""
        self._decoded += self._new_text(token_id)
        if self.stop:
            longest = max(map(len, self.stop))
            start = max(0, self._searched - longest + 1)
            hits = [(i, s) for s in self.stop if (i := self._decoded.find(s, start)) >= 0]
            self._searched = len(self._decoded)
            if hits:
                index, self.stop_found = min(hits)
                self._decoded = self._decoded[:index]
                return self._take(len(self._decoded))
        return self._take(len(self._decoded) - held_back_length(self._decoded, self.stop))

    def finish(self) -> str:
        """The text still held back, when generation ended without a stop string."""
        return self._take(len(self._decoded))

    def _take(self, end: int) -> str:
        piece = self._decoded[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return piece
