"""From rows to token ids: render, tokenise, mark the trained tokens, truncate.

Rendering. Plain-text rows are prompt + completion + eos. Conversations are rendered with Apple's
chat template (``elmforge.data.chat``), one message at a time, so the text is exactly what
``apply_chat_template`` gives; an assistant turn's ``<|assistant|>\\n`` tag is prompt and its
content, eos and the newline after it are completion (as TRL splits a conversational prompt from
its completion).

Tokenising. The whole text is tokenised at once (as lm-eval and inference see it, so a token that
straddles the prompt/completion boundary is the one the model meets later); a token is trained
when it holds a character of a completion span (the tokenizer's character offsets). A token that
straddles the boundary (LLaMA's ``▁the`` after LLM-Adapters' indentation) is completion: the
model must produce it to answer. Tokens made of prompt characters only never count in the loss.

BOS. Every sequence starts with the tokenizer's bos token, chat rows included. CoreNet frames
every training document with bos/eos, lm-eval scores with bos added (as Apple evaluated), and the
pretrained model has only ever seen text after a bos; TRL 1.16 adds none to conversational rows
(``apply_chat_template`` tokenises without special tokens) and one to plain-text rows. We add it
to all, so chat and plain rows are framed alike and like pretraining (docs/finetune.md).

Truncation (``max_length`` tokens in all, ``max_prompt_length`` for the prompt): the prompt is
everything before the first trained token and is kept from its start, cut to
``max_prompt_length``; the completion is cut at the end to fit ``max_length``. Rows that were cut
are counted; a row left with no trained token (impossible when ``max_prompt_length <
max_length``) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from elmforge.data.chat import GENERATION_PROMPT, render_chat
from elmforge.errors import ConfigError
from elmforge.finetune.data import Message, PreferenceRow, SFTRow
from elmforge.train.optim import IGNORE_INDEX

Segments = list[tuple[str, bool]]


@dataclass
class TokenRow:
    """Token ids and, per token, whether it is trained (predicted with loss)."""

    ids: list[int]
    trained: list[bool]


@dataclass
class EncodeStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self, what: str) -> str:
        line = f"{self.rows} {what}, {self.tokens:,} tokens"
        if self.truncated:
            line += f"; {self.truncated} truncated (prompt kept from its start, completion cut)"
        if self.dropped:
            line += f"; {self.dropped} dropped (nothing left to train on after truncation)"
        return line


# -- rendering -----------------------------------------------------------------------------------
def conversation_segments(
    messages: Sequence[Message], trained_from: int, eos: str, generation_prompt: bool = False
) -> Segments:
    """Apple's template, message by message; assistant content from ``trained_from`` is trained."""
    segments: Segments = []
    for index, message in enumerate(messages):
        text = render_chat([message], eos_token=eos)
        if message["role"] == "assistant" and index >= trained_from:
            segments += [(GENERATION_PROMPT, False), (text[len(GENERATION_PROMPT) :], True)]
        else:
            segments.append((text, False))
    if generation_prompt:
        segments.append((GENERATION_PROMPT, False))
    return segments


def sft_segments(row: SFTRow, eos: str) -> Segments:
    if row.messages:
        return conversation_segments(row.messages, row.trained_from, eos)
    return [(row.prompt, False), (row.completion + eos, True)]


def preference_segments(row: PreferenceRow, eos: str) -> tuple[Segments, Segments]:
    """(prompt + chosen, prompt + rejected) segments of a pair."""
    if isinstance(row.prompt, str):
        return (
            [(row.prompt, False), (str(row.chosen) + eos, True)],
            [(row.prompt, False), (str(row.rejected) + eos, True)],
        )
    prompt = list(row.prompt)
    start = len(prompt)
    return (
        conversation_segments([*prompt, *row.chosen], start, eos),
        conversation_segments([*prompt, *row.rejected], start, eos),
    )


# -- tokenising ----------------------------------------------------------------------------------
def special_ids(tokenizer: Any) -> tuple[int | None, str]:
    """(bos id or None, eos text): the framing every sequence gets."""
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise ConfigError("the tokenizer has no eos token; fine-tuning needs one to end answers")
    return getattr(tokenizer, "bos_token_id", None), eos


def encode_segments(tokenizer: Any, segments: Segments) -> TokenRow:
    """Token ids of the joined segments (bos first) and which tokens are trained."""
    text = "".join(piece for piece, _ in segments)
    spans, position = [], 0
    for piece, trained in segments:
        if trained:
            spans.append((position, position + len(piece)))
        position += len(piece)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    trained_flags = [
        any(start < b and max(end, start + 1) > a for a, b in spans)
        for start, end in encoding["offset_mapping"]
    ]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids.insert(0, bos)
        trained_flags.insert(0, False)
    return TokenRow(ids, trained_flags)


def truncate(seq: TokenRow, max_length: int, max_prompt_length: int) -> tuple[TokenRow, bool]:
    """The stated rule (module docstring); returns the sequence and whether it was cut."""
    first = next((i for i, t in enumerate(seq.trained) if t), len(seq.ids))
    prompt_end = min(first, max_prompt_length)
    room = max_length - prompt_end
    rest = slice(first, first + max(room, 0))
    ids = seq.ids[:prompt_end] + seq.ids[rest]
    trained = seq.trained[:prompt_end] + seq.trained[rest]
    return TokenRow(ids, trained), len(ids) < len(seq.ids)


def check_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_length < 2:
        raise ConfigError(f"data.max_length: must be at least 2, got {max_length}")
    if not 0 < max_prompt_length < max_length:
        raise ConfigError(
            f"data.max_prompt_length: must be between 1 and data.max_length - 1 "
            f"({max_length - 1}), got {max_prompt_length}"
        )


def _fit(
    tokenizer: Any, segments: Segments, max_length: int, max_prompt_length: int
) -> tuple[TokenRow, bool]:
    return truncate(encode_segments(tokenizer, segments), max_length, max_prompt_length)


def encode_sft(
    rows: Sequence[SFTRow], tokenizer: Any, max_length: int, max_prompt_length: int
) -> tuple[list[TokenRow], EncodeStats]:
    check_lengths(max_length, max_prompt_length)
    _, eos = special_ids(tokenizer)
    stats, out = EncodeStats(), []
    for row in rows:
        seq, cut = _fit(tokenizer, sft_segments(row, eos), max_length, max_prompt_length)
        stats.truncated += cut
        if not any(seq.trained[1:]):
            stats.dropped += 1
            continue
        stats.rows += 1
        stats.tokens += len(seq.ids)
        out.append(seq)
    return out, stats


def encode_preferences(
    rows: Sequence[PreferenceRow], tokenizer: Any, max_length: int, max_prompt_length: int
) -> tuple[list[tuple[TokenRow, TokenRow]], EncodeStats]:
    check_lengths(max_length, max_prompt_length)
    _, eos = special_ids(tokenizer)
    stats, out = EncodeStats(), []
    for row in rows:
        chosen_segments, rejected_segments = preference_segments(row, eos)
        chosen, cut_chosen = _fit(tokenizer, chosen_segments, max_length, max_prompt_length)
        rejected, cut_rejected = _fit(tokenizer, rejected_segments, max_length, max_prompt_length)
        stats.truncated += cut_chosen or cut_rejected
        if not any(chosen.trained[1:]) or not any(rejected.trained[1:]):
            stats.dropped += 1
            continue
        stats.rows += 1
        stats.tokens += len(chosen.ids) + len(rejected.ids)
        out.append((chosen, rejected))
    return out, stats


# -- batches ---------------------------------------------------------------------------------------
def collate(sequences: Sequence[TokenRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` (B, S) and next-token ``labels`` (B, S), -100 where untrained.

    Labels are already shifted (position j is scored on token j + 1), the convention of
    ``elmforge.train.optim.loss_sums``. With right padding a causal model never lets a real token
    see a pad, so no attention mask is needed and positions are 0..S-1 as in pretraining.
    """
    width = max(len(s.ids) for s in sequences) - 1
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids = torch.tensor(seq.ids, dtype=torch.long)
        trained = torch.tensor(seq.trained[1:], dtype=torch.bool)
        input_ids[row, : len(ids) - 1] = ids[:-1]
        labels[row, : len(ids) - 1] = torch.where(trained, ids[1:], IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels}


def collate_packed(
    sequences: Sequence[Sequence[TokenRow]], pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Packed rows: each row concatenates several examples (each as :func:`collate` lays one
    out: its ids but the last as input, the next tokens as labels). ``position_ids`` restart at
    0 for every example and ``attention_mask`` (B, 1, S, S, boolean) is block-diagonal causal:
    a token sees the earlier tokens of its own example only, so each example is computed exactly
    as alone. Padding at a row's end is its own block (labels -100)."""
    lengths = [sum(len(e.ids) - 1 for e in row) for row in sequences]
    width = width or max(lengths)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(sequences), width), dtype=torch.long)
    segments = torch.full((len(sequences), width), -1, dtype=torch.long)
    for r, row in enumerate(sequences):
        start = 0
        for index, example in enumerate(row):
            one = collate([example], pad_id)
            end = start + one["input_ids"].shape[1]
            input_ids[r, start:end] = one["input_ids"][0]
            labels[r, start:end] = one["labels"][0]
            positions[r, start:end] = torch.arange(end - start)
            segments[r, start:end] = index
            start = end
        positions[r, start:] = torch.arange(width - start)
        segments[r, start:] = len(row)  # the padding: a block of its own
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segments[:, :, None] == segments[:, None, :]) & causal
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions,
            "attention_mask": mask[:, None]}  # fmt: skip


def pad_id_of(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0
