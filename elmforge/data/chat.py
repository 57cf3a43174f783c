"""Apple's chat template for OpenELM-Instruct, as the Jinja string and as plain Python.

Apple trained the -Instruct models (DPO through TRL and the Alignment Handbook) with the Zephyr
style template below, but its hub repositories ship neither a tokenizer nor the template; this is
the one place elmforge keeps it (docs/openelm.md, "Chat template"). Every model directory
elmforge writes for chat carries it as ``chat_template`` in ``tokenizer_config.json``, so
``apply_chat_template``, mlx-lm and llama.cpp's converter find it.

Rendered with transformers' Jinja settings (``trim_blocks``, ``lstrip_blocks``), each message
becomes ``<|role|>\\n`` + content + eos + ``\\n`` (roles other than system/user/assistant render
nothing), and the generation prompt is ``<|assistant|>\\n``. The role tags are plain text to the
LLaMA-2 tokenizer; ``</s>`` is its eos token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from elmforge.errors import ElmforgeError

APPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)
ROLES = ("system", "user", "assistant")
GENERATION_PROMPT = "<|assistant|>\n"
DEFAULT_EOS = "</s>"


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """``messages`` as a list of ``{role, content}`` dicts with known roles, or a one-line error.

    The order rule is the one chat models are trained on: an optional system message first, then
    user and assistant turns alternating, starting with a user turn.
    """
    if not isinstance(messages, list) or not messages:
        raise ElmforgeError(f"{where}: expected a non-empty list of {{role, content}} messages")
    checked: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ElmforgeError(f"{where}[{i}]: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ElmforgeError(f"{where}[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ElmforgeError(f"{where}[{i}].content: expected a string")
        checked.append({"role": role, "content": content})
    turns = checked[1:] if checked[0]["role"] == "system" else checked
    for i, message in enumerate(turns):
        index = i + len(checked) - len(turns)
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ElmforgeError(
                f"{where}[{index}].role: {message['role']!r} out of order (after an optional "
                f"system message, turns alternate user, assistant, ... starting with user)"
            )
    return checked


def render_chat(
    messages: Iterable[Mapping[str, str]],
    add_generation_prompt: bool = False,
    eos_token: str = DEFAULT_EOS,
) -> str:
    """Exactly what :data:`APPLE_CHAT_TEMPLATE` renders (tested against jinja2)."""
    messages = list(messages)
    parts = [
        f"<|{m['role']}|>\n{m['content']}{eos_token}\n" for m in messages if m["role"] in ROLES
    ]
    if messages and add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def ensure_chat_template(tokenizer: Any, template: str = APPLE_CHAT_TEMPLATE) -> Any:
    """Give ``tokenizer`` Apple's template unless it already has one; returns the tokenizer."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    return tokenizer
