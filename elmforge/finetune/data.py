"""Fine-tuning data: read rows, tell their format from the columns, check every row.

Where rows come from (``--data``): a ``.json`` file (an array of objects, as LLM-Adapters ships
them, or one object per line), a ``.jsonl`` file, a ``.parquet`` file, a directory of those (read
in name order), or ``hf:org/name`` with ``--split`` (a hub dataset, needs the network or the hub
cache). Fine-tuning sets are small (LLM-Adapters' CommonSense-170k, UltraFeedback's 60k pairs), so
rows are read into memory; rows are counted from 1 in messages.

Formats, told from the first row's columns: every layout of TRL's dataset-format table, standard
(text) and conversational (message lists):

- ``language-modeling``: ``text`` (standard) or ``messages`` (conversational, ``chat`` below);
  SFT trains on the whole text, or on every assistant turn;
- ``chat``: ``messages``, a list of ``{role, content}`` (roles system/user/assistant in the order
  chat models are trained on); every assistant turn is trained;
- ``prompt-completion``: ``prompt`` and ``completion``, both strings or both message lists;
- ``instruction``: ``instruction``, ``output`` and optionally ``input`` (Alpaca, LLM-Adapters),
  rendered by the prompt style (``alpaca``, ``llm-adapters``, ``chat``);
- ``preference``: ``chosen`` and ``rejected`` with an explicit ``prompt`` (text, or a message
  list ending in a user turn with assistant turns in chosen/rejected), or with the prompt implicit:
  two conversations that share their opening turns (UltraFeedback), or two texts that share their
  beginning (TRL's ``extract_prompt``: the common prefix, a space before the split left with the
  completion);
- ``unpaired-preference``: ``prompt``, ``completion`` and a boolean ``label`` (KTO's layout): SFT
  trains on the rows labelled true (the others are left out); DPO refuses it (it
  needs pairs);
- ``prompt-only`` (``prompt`` alone) and ``stepwise-supervision`` (``prompt``, ``completions``,
  ``labels``) hold nothing SFT or DPO can train on and are refused by name.

A row that does not fit (a missing column, roles out of order, chosen equal to rejected, an
empty completion) stops the run with one line naming the file, the row and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elmforge.data.chat import check_messages
from elmforge.data.prompts import instruction_prompt, instruction_user_message
from elmforge.data.records import RawRow, read_records
from elmforge.errors import DataError, ElmforgeError

# Format -> the columns that identify it (checked in this order) and, for messages, what it is.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": ("chosen", "rejected"),
    "stepwise-supervision": ("prompt", "completions", "labels"),
    "unpaired-preference": ("prompt", "completion", "label"),
    "chat": ("messages",),
    "prompt-completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "language-modeling": ("text",),
    "prompt-only": ("prompt",),
}
SFT_FORMATS = ("chat", "prompt-completion", "instruction", "language-modeling",
               "unpaired-preference")  # fmt: skip
# Layouts of TRL's table that neither objective trains on, and why.
UNTRAINABLE = {
    "prompt-only": "prompt-only rows (a prompt and no completion) are for generation-based "
    "training (GRPO, online DPO); SFT needs completions, DPO chosen/rejected pairs",
    "stepwise-supervision": "stepwise-supervision rows (prompt, completions, labels) are for "
    "process reward models; SFT needs one completion, DPO chosen/rejected pairs",
}
EXPECTED_COLUMNS = (
    "text | messages | prompt, completion[, label] | instruction, [input,] output | "
    "[prompt,] chosen, rejected"
)

Message = dict[str, str]


@dataclass(frozen=True)
class SFTRow:
    """One supervised example: a plain-text prompt and completion, or a conversation."""

    where: str
    prompt: str = ""
    completion: str = ""
    messages: tuple[Message, ...] = ()
    trained_from: int = 0
    """In a conversation, assistant turns from this index on are trained (earlier ones are
    context, as in a prompt/completion pair given as message lists)."""


@dataclass(frozen=True)
class PreferenceRow:
    """One preference pair: a prompt and two completions, as text or as messages."""

    where: str
    prompt: str | tuple[Message, ...]
    chosen: str | tuple[Message, ...]
    rejected: str | tuple[Message, ...]


# -- reading -----------------------------------------------------------------------------------
def read_rows(spec: str | os.PathLike, split: str = "train") -> list[RawRow]:
    """Every row of ``spec`` (:func:`elmforge.data.records.read_records`: the readers the
    pretraining sources use), each with where it came from."""
    return read_records(spec, split)


# -- formats -----------------------------------------------------------------------------------
def detect_format(rows: Sequence[RawRow], source: str) -> str:
    """The format the first row's columns name (see FORMAT_COLUMNS)."""
    columns = set(rows[0].values)
    for name, needed in FORMAT_COLUMNS.items():
        if set(needed) <= columns:
            return name
    listed = ", ".join(sorted(columns)) or "none"
    raise DataError(
        f"{source}: cannot tell the data format from the columns ({listed}); expected "
        f"{EXPECTED_COLUMNS}"
    )


def _column(row: RawRow, name: str) -> Any:
    if name not in row.values or row.values[name] is None:
        raise DataError(f"{row.where}: no {name!r} column")
    return row.values[name]


def _text(row: RawRow, name: str, *, optional: bool = False) -> str:
    if optional and row.values.get(name) is None:
        return ""
    value = _column(row, name)
    if not isinstance(value, str):
        raise DataError(f"{row.where}: {name!r} is a {type(value).__name__}, expected text")
    return value


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    try:
        return tuple(check_messages(value if isinstance(value, list) else None, where))
    except ElmforgeError as err:
        raise DataError(str(err)) from None


def _needs_answer(text: str, row: RawRow, name: str) -> str:
    if not text.strip():
        raise DataError(f"{row.where}: {name!r} is empty (nothing to train on)")
    return text


def _chat_row(row: RawRow) -> SFTRow:
    messages = _messages(_column(row, "messages"), f"{row.where}: messages")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{row.where}: messages: the conversation ends without an assistant turn")
    return SFTRow(row.where, messages=messages)


def _text_row(row: RawRow) -> SFTRow:
    """A standard language-modeling row: the whole text is trained."""
    return SFTRow(row.where, completion=_needs_answer(_text(row, "text"), row, "text"))


def _unpaired_label(row: RawRow) -> bool:
    label = _column(row, "label")
    if not isinstance(label, bool):
        raise DataError(f"{row.where}: 'label' is a {type(label).__name__}, expected true or false")
    return label


def _prompt_completion_row(row: RawRow) -> SFTRow:
    prompt, completion = _column(row, "prompt"), _column(row, "completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return SFTRow(
            row.where, prompt=prompt, completion=_needs_answer(completion, row, "completion")
        )
    if isinstance(prompt, list) and isinstance(completion, list):
        where = f"{row.where}: prompt + completion"
        messages = _messages(prompt + completion, where)
        if not completion or any(m["role"] != "assistant" for m in messages[len(prompt) :]):
            raise DataError(f"{row.where}: completion: expected assistant messages")
        return SFTRow(row.where, messages=messages, trained_from=len(prompt))
    raise DataError(
        f"{row.where}: prompt and completion must both be text or both be message lists"
    )


def _instruction_row(row: RawRow, prompt_style: str) -> SFTRow:
    instruction = _text(row, "instruction")
    extra = _text(row, "input", optional=True)
    output = _needs_answer(_text(row, "output"), row, "output")
    if prompt_style == "chat":
        messages = (
            {"role": "user", "content": instruction_user_message(instruction, extra)},
            {"role": "assistant", "content": output},
        )
        return SFTRow(row.where, messages=messages)
    return SFTRow(row.where, prompt=instruction_prompt(prompt_style, instruction, extra),
                  completion=output)  # fmt: skip


def _common_prefix(a: Sequence[Message], b: Sequence[Message]) -> int:
    count = 0
    for left, right in zip(a[:-1], b[:-1]):
        if left != right:
            break
        count += 1
    return count


def _text_prefix(chosen: str, rejected: str) -> int:
    """TRL's ``extract_prompt`` on text: the common prefix, a space before the split left with
    the completions."""
    index = 0
    while index < min(len(chosen), len(rejected)) and chosen[index] == rejected[index]:
        index += 1
    if 0 < index < min(len(chosen), len(rejected)) and chosen[index - 1] == " ":
        index -= 1
    return index


def _text_pair(row: RawRow, prompt: Any, chosen: str, rejected: str) -> PreferenceRow:
    if prompt is None:  # implicit prompt: the texts' shared beginning
        shared = _text_prefix(chosen, rejected)
        if not shared:
            raise DataError(
                f"{row.where}: no 'prompt' column and chosen and rejected share no beginning"
            )
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    elif not isinstance(prompt, str):
        raise DataError(
            f"{row.where}: 'prompt' is a {type(prompt).__name__}; with text chosen and rejected "
            "it must be text"
        )
    return PreferenceRow(row.where, prompt, _needs_answer(chosen, row, "chosen"),
                         _needs_answer(rejected, row, "rejected"))  # fmt: skip


def _conversation_pair(row: RawRow, prompt: Any, chosen: list, rejected: list) -> PreferenceRow:
    starts_with_answer = (
        bool(chosen) and isinstance(chosen[0], Mapping) and (chosen[0].get("role") == "assistant")
    )
    if prompt is not None and starts_with_answer:
        # Explicit prompt: the prompt's turns, then chosen/rejected continue the conversation.
        if isinstance(prompt, str):
            prompt_messages: tuple[Message, ...] = ({"role": "user", "content": prompt},)
        elif isinstance(prompt, list):
            prompt_messages = _messages(prompt, f"{row.where}: prompt")
        else:
            raise DataError(f"{row.where}: 'prompt' must be text or a list of messages")
        shared = 0
    else:  # implicit prompt: the conversations' shared opening turns (UltraFeedback)
        chosen_all = _messages(chosen, f"{row.where}: chosen")
        rejected_all = _messages(rejected, f"{row.where}: rejected")
        shared = _common_prefix(chosen_all, rejected_all)
        if not shared:
            raise DataError(
                f"{row.where}: chosen and rejected share no opening turns and there is no "
                "'prompt' column to take the prompt from"
            )
        prompt_messages = chosen_all[:shared]
    completions = []
    for name, full in (("chosen", chosen), ("rejected", rejected)):
        rest = full[shared:]
        checked = _messages([*prompt_messages, *rest], f"{row.where}: prompt + {name}")
        rest = checked[len(prompt_messages) :]
        if not rest or any(m["role"] != "assistant" for m in rest):
            raise DataError(f"{row.where}: {name}: expected assistant messages after the prompt")
        completions.append(tuple(rest))
    return PreferenceRow(row.where, prompt_messages, completions[0], completions[1])


def _preference_row(row: RawRow) -> PreferenceRow:
    chosen, rejected = _column(row, "chosen"), _column(row, "rejected")
    prompt = row.values.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        pair = _text_pair(row, prompt, chosen, rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        pair = _conversation_pair(row, prompt, chosen, rejected)
    else:
        raise DataError(f"{row.where}: chosen and rejected must both be text or both message lists")
    if pair.chosen == pair.rejected:
        raise DataError(f"{row.where}: chosen equals rejected (no preference to learn)")
    return pair


def load_sft_rows(
    spec: str | os.PathLike, split: str = "train", prompt_style: str = "alpaca"
) -> tuple[list[SFTRow], str]:
    """Supervised rows of ``spec`` and their format; preference, prompt-only and stepwise data
    are refused by name. Unpaired-preference rows labelled false are left out (not trained on)."""
    rows = read_rows(spec, split)
    kind = detect_format(rows, str(spec))
    if kind in UNTRAINABLE:
        raise DataError(f"{spec}: {UNTRAINABLE[kind]}")
    if kind not in SFT_FORMATS:
        raise DataError(
            f"{spec}: {kind} rows (chosen/rejected) are for `elmforge finetune dpo`; SFT needs "
            "text | messages | prompt, completion | instruction, [input,] output"
        )
    if kind == "chat":
        return [_chat_row(row) for row in rows], kind
    if kind == "language-modeling":
        return [_text_row(row) for row in rows], kind
    if kind == "unpaired-preference":
        kept = [_prompt_completion_row(row) for row in rows if _unpaired_label(row)]
        if not kept:
            raise DataError(f"{spec}: every unpaired-preference row is labelled false")
        return kept, kind
    if kind == "prompt-completion":
        return [_prompt_completion_row(row) for row in rows], kind
    return [_instruction_row(row, prompt_style) for row in rows], kind


def load_preference_rows(spec: str | os.PathLike, split: str = "train") -> list[PreferenceRow]:
    """Preference pairs of ``spec``; other formats are refused naming the columns DPO needs."""
    rows = read_rows(spec, split)
    kind = detect_format(rows, str(spec))
    if kind in UNTRAINABLE:
        raise DataError(f"{spec}: {UNTRAINABLE[kind]}")
    if kind == "unpaired-preference":
        raise DataError(
            f"{spec}: unpaired-preference rows (prompt, completion, label) rate one completion "
            "each (KTO's layout); DPO needs preference rows with [prompt,] chosen, rejected"
        )
    if kind != "preference":
        columns = ", ".join(sorted(rows[0].values))
        raise DataError(
            f"{spec}: DPO needs preference rows with [prompt,] chosen, rejected columns; "
            f"these rows have {columns}"
        )
    return [_preference_row(row) for row in rows]
