"""Rendering, bos, the trained-token mask and the truncation rule."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
import torch

from elmforge.data.chat import APPLE_CHAT_TEMPLATE, render_chat
from elmforge.data.prompts import llm_adapters_prompt
from elmforge.finetune.data import PreferenceRow, SFTRow
from elmforge.finetune.tokenize import (
    IGNORE_INDEX,
    TokenRow,
    collate,
    conversation_segments,
    encode_preferences,
    encode_segments,
    encode_sft,
    sft_segments,
    truncate,
)

CONVERSATION = (
    {"role": "system", "content": "You  answer\tbriefly.\n"},
    {"role": "user", "content": "Name   a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?\n\n"},
    {"role": "assistant", "content": "Red,  obviously."},
)


def _jinja(messages, add_generation_prompt=False) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(APPLE_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, eos_token="</s>"
    )


def _trained_text(tokenizer, seq: TokenRow) -> str:
    return tokenizer.decode([i for i, t in zip(seq.ids, seq.trained) if t])


def test_conversation_segments_render_apples_template(bpe_tokenizer) -> None:
    segments = conversation_segments(CONVERSATION, 0, "</s>")
    assert "".join(text for text, _ in segments) == _jinja(list(CONVERSATION))
    trained = [text for text, flag in segments if flag]
    assert trained == ["Blue.</s>\n", "Red,  obviously.</s>\n"]
    prompt = conversation_segments(CONVERSATION[:2], 2, "</s>", generation_prompt=True)
    assert "".join(t for t, _ in prompt) == _jinja(list(CONVERSATION[:2]), True)


def test_chat_rows_start_with_bos_and_train_only_assistant_turns(bpe_tokenizer) -> None:
    row = SFTRow("row", messages=CONVERSATION)
    (seq,), stats = encode_sft([row], bpe_tokenizer, 512, 256)
    assert (
        seq.ids[0] == bpe_tokenizer.bos_token_id and seq.ids.count(bpe_tokenizer.bos_token_id) == 1
    )
    assert bpe_tokenizer.decode(seq.ids[1:]) == render_chat(CONVERSATION)
    assert _trained_text(bpe_tokenizer, seq) == "Blue.</s>\nRed,  obviously.</s>\n"
    assert stats.rows == 1 and stats.truncated == 0


def test_text_rows_mask_the_prompt_and_end_with_eos(bpe_tokenizer) -> None:
    row = SFTRow("row", prompt="What colour is the sky?\n", completion="The sky is blue.")
    (seq,), _ = encode_sft([row], bpe_tokenizer, 512, 256)
    assert seq.ids[0] == bpe_tokenizer.bos_token_id
    assert seq.ids[-1] == bpe_tokenizer.eos_token_id
    assert _trained_text(bpe_tokenizer, seq) == "The sky is blue.</s>"
    batch = collate([seq], pad_id=0)
    labels = batch["labels"][0]
    # Position j scores token j+1: exactly the completion tokens carry labels.
    expected = [t if f else IGNORE_INDEX for t, f in zip(seq.ids[1:], seq.trained[1:])]
    assert labels.tolist() == expected
    assert batch["input_ids"][0].tolist() == seq.ids[:-1]


def test_truncation_keeps_the_prompt_start_and_cuts_the_completion() -> None:
    seq = TokenRow(list(range(20)), [False] * 12 + [True] * 8)
    cut, was_cut = truncate(seq, max_length=10, max_prompt_length=6)
    assert was_cut and cut.ids == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15]
    assert cut.trained == [False] * 6 + [True] * 4
    whole, was_cut = truncate(seq, max_length=30, max_prompt_length=15)
    assert not was_cut and whole == seq


def test_overlong_rows_are_counted(bpe_tokenizer) -> None:
    long_row = SFTRow("r", prompt="word " * 50, completion="answer " * 50)
    short_row = SFTRow("s", prompt="q", completion="a")
    sequences, stats = encode_sft([long_row, short_row], bpe_tokenizer, 32, 16)
    assert stats.rows == 2 and stats.truncated == 1 and len(sequences[0].ids) == 32
    assert sum(not t for t in sequences[0].trained) == 16
    assert "1 truncated" in stats.describe("rows")


def test_preference_pairs_share_the_prompt(bpe_tokenizer) -> None:
    pair = PreferenceRow("p", "What colour is the sky?", " The sky is blue.", " The sky is red.")
    ((chosen, rejected),), _ = encode_preferences([pair], bpe_tokenizer, 64, 32)
    first = chosen.trained.index(True)
    assert chosen.ids[:first] == rejected.ids[: rejected.trained.index(True)]
    assert _trained_text(bpe_tokenizer, rejected) == " The sky is red.</s>"


def test_llm_adapters_rows_tokenise_as_their_training_code_does(
    llama2_tokenizer_path, shared_dir
) -> None:
    """LLM-Adapters and CoreNet tokenise prompt + output in one piece and add bos and eos."""
    import sentencepiece as spm

    from elmforge.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(llama2_tokenizer_path)
    processor = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    path = shared_dir / "data" / "commonsense" / "ARC-Easy" / "train.json"
    rows = json.loads(Path(path).read_text())[:20]
    for raw in rows:
        prompt = llm_adapters_prompt(raw["instruction"], raw["input"])
        row = SFTRow("r", prompt=prompt, completion=raw["output"])
        seq = encode_segments(tokenizer, sft_segments(row, tokenizer.eos_token))
        assert seq.ids == [1, *processor.encode(prompt + raw["output"]), 2]
        assert tokenizer.decode([i for i, t in zip(seq.ids, seq.trained) if t]).startswith(
            "the correct answer is"
        )


@pytest.mark.parametrize("width", [3, 7])
def test_collate_pads_right_without_labels(width: int) -> None:
    rows = [
        TokenRow(list(range(1, width + 1)), [False] + [True] * (width - 1)),
        TokenRow([1, 2], [False, True]),
    ]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, width - 1)
    assert torch.all(batch["labels"][1, 1:] == IGNORE_INDEX)
