"""Apple's chat template: the Python rendering equals jinja2's, and the tags are plain text."""

from __future__ import annotations

import jinja2
import pytest

from elmforge.data.chat import (
    APPLE_CHAT_TEMPLATE,
    check_messages,
    ensure_chat_template,
    render_chat,
)
from elmforge.errors import ElmforgeError

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are  terse.\t"},
        {"role": "user", "content": "Two  spaces,\ttab,\nnewline\n\n"},
        {"role": "assistant", "content": "  leading and trailing  "},
        {"role": "user", "content": "ünïcödé 12345 and </s> inside"},
    ],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "\n"}],
    [{"role": "tool", "content": "ignored by the template"}, {"role": "user", "content": "x"}],
]


def jinja_render(messages, add_generation_prompt, eos_token="</s>"):
    # transformers renders chat templates with these two settings.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(APPLE_CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, eos_token=eos_token
    )


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_equals_jinja(messages, add_generation_prompt):
    expected = jinja_render(messages, add_generation_prompt)
    assert render_chat(messages, add_generation_prompt) == expected
    assert render_chat(messages, add_generation_prompt, eos_token="<eos>") == jinja_render(
        messages, add_generation_prompt, "<eos>"
    )


def test_render_shape():
    text = render_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text == "<|user|>\nHi</s>\n<|assistant|>\n"
    assert render_chat([], add_generation_prompt=True) == ""


def test_tags_are_plain_text_to_llama2(llama2_tokenizer_path):
    from elmforge.data.tokenizer import load_tokenizer

    tokenizer = ensure_chat_template(load_tokenizer(llama2_tokenizer_path))
    messages = CONVERSATIONS[1]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat(messages, True)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    # Role tags are ordinary pieces (no added token), eos is the real eos id.
    assert "<|user|>" not in tokenizer.get_added_vocab()
    assert ids.count(tokenizer.eos_token_id) == rendered.count("</s>")
    # Between the eos tokens, the text encodes exactly as sentencepiece encodes it.
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    head = rendered.split("</s>")[0]
    assert ids[: ids.index(tokenizer.eos_token_id)] == processor.encode(head)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "content"),
        ([{"role": "robot", "content": "x"}], "'robot'"),
        ([{"role": "assistant", "content": "x"}], "out of order"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "out of order"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "out of order"),
    ],
)
def test_check_messages_errors(messages, problem):
    with pytest.raises(ElmforgeError, match=problem):
        check_messages(messages)


def test_check_messages_accepts_system_first():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "u2"},
    ]
    assert check_messages(messages) == messages
