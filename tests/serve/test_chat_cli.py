"""`elmforge chat`: driven through stdin (two turns, the second prompt holds the first), the
commands, history trimming at the context, and the model's own template when it has one."""

from __future__ import annotations

import copy

import pytest

from elmforge.data.chat import render_chat
from elmforge.infer.chat import chat_loop, render_messages
from elmforge.infer.generate import SamplingOptions, generate_text
from tests.cli_support import run_elmforge

PROMPT_MARK = "[elmforge] prompt:\n"


@pytest.fixture(scope="module")
def loaded(model_dir):
    from elmforge.modeldir.loading import load

    return load(model_dir, device="cpu", dtype="fp32")


def rendered_prompts(stderr: str) -> list[str]:
    """The prompts `--show-prompt` printed (each is followed by print's newline)."""
    blocks = stderr.split(PROMPT_MARK)[1:]
    return [block.split("\n[elmforge]")[0].removesuffix("\n") for block in blocks]


def test_chat_through_stdin_second_turn_sees_the_first(model_dir, loaded):
    proc = run_elmforge(
        "chat", model_dir, "--greedy", "--max-new-tokens", "10", "--show-prompt",
        input="the cat sat\nand then?\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = rendered_prompts(proc.stderr)
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token
    user = [{"role": "user", "content": "the cat sat"}]
    assert first == render_chat(user, add_generation_prompt=True, eos_token=eos)
    # The first reply, computed independently in-process from the same prompt.
    ids = tokenizer(first)["input_ids"]
    options = SamplingOptions(max_new_tokens=10, greedy=True)
    reply = generate_text(loaded.model, tokenizer, ids, options).text
    conversation = [*user, {"role": "assistant", "content": reply},
                    {"role": "user", "content": "and then?"}]  # fmt: skip
    assert second == render_chat(conversation, add_generation_prompt=True, eos_token=eos)
    assert proc.stdout.startswith(reply + "\n")


def test_commands_system_reset_and_unknown(loaded):
    prompts, notices = [], []
    options = SamplingOptions(max_new_tokens=4, greedy=True)
    lines = ["hi", "/system Be brief.", "again", "/reset", "fresh", "/help", "/quit", "never"]
    chat_loop(loaded.model, loaded.tokenizer, options, lines, write=lambda _: None,
              report=notices.append, show_prompt=prompts.append)  # fmt: skip
    assert len(prompts) == 3  # hi, again, fresh; nothing after /quit
    assert "<|system|>" not in prompts[0]
    assert prompts[1].startswith("<|system|>\nBe brief.") and prompts[1].count("<|user|>") == 2
    assert prompts[2].startswith("<|system|>\nBe brief.") and prompts[2].count("<|user|>") == 1
    assert any("conversation cleared" in n for n in notices)
    assert any("unknown command /help" in n for n in notices)


def test_history_is_trimmed_from_the_oldest_turn_with_a_notice(loaded, monkeypatch):
    context, new_tokens = 64, 8  # room for 56 prompt tokens: about two turns
    monkeypatch.setattr(loaded.model.config, "max_context_length", context)
    prompts, notices = [], []
    options = SamplingOptions(max_new_tokens=new_tokens, greedy=True)
    lines = ["first question", "second question", "third question", "x" * 500, "last"]
    session = chat_loop(loaded.model, loaded.tokenizer, options, lines, write=lambda _: None,
                        report=notices.append, show_prompt=prompts.append)  # fmt: skip
    assert any("dropped the oldest" in n for n in notices)
    assert "first question" in prompts[0] and "first question" not in prompts[-1]
    assert "last" in prompts[-1]
    assert all(len(loaded.tokenizer(p)["input_ids"]) + new_tokens <= context for p in prompts)
    assert any("send a shorter one" in n for n in notices)  # the long message was refused...
    assert all("x" * 50 not in p for p in prompts)
    assert session.turns[-1][0] == "last"  # ...and the chat went on


def test_the_model_directorys_own_template_wins(loaded):
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    )
    messages = [{"role": "user", "content": "hello"}]
    assert render_messages(tokenizer, messages) == "[user] hello\n[assistant] "
    assert render_messages(loaded.tokenizer, messages) == "<|user|>\nhello</s>\n<|assistant|>\n"
