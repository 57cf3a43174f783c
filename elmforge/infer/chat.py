"""Chat: the prompt a conversation renders to, and the terminal session behind ``elmforge chat``.

The template is the model directory's own (``chat_template`` in its tokenizer files) when it has
one, else Apple's (``elmforge.data.chat``, what OpenELM-Instruct was trained with). The rendered
text is tokenised with the tokenizer's special tokens (LLaMA-2's bos first, as in training)
unless the template already writes the bos token itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from elmforge.data.chat import DEFAULT_EOS, render_chat
from elmforge.errors import ElmforgeError
from elmforge.infer.generate import (
    ContextOverflowError,
    GenerationResult,
    SamplingOptions,
    generate_text,
)
from elmforge.modeldir.loading import context_length_of
from elmforge.progress import Report

COMMANDS_HELP = "commands: /reset (forget the conversation), /system TEXT, /quit"


def render_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text for ``messages``, ending with the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as err:  # jinja raises its own errors for a broken template
            raise ElmforgeError(f"the model's chat template failed: {err}") from None
    return render_chat(
        messages, add_generation_prompt=True, eos_token=tokenizer.eos_token or DEFAULT_EOS
    )


def encode_rendered(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered chat (bos added once, unless the template wrote it)."""
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


@dataclass
class ChatSession:
    """A conversation: optional system message, then (user, assistant) turns, oldest first."""

    tokenizer: Any
    context: int
    max_new_tokens: int
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def messages(self, user: str, turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for asked, answered in turns:
            messages += [
                {"role": "user", "content": asked},
                {"role": "assistant", "content": answered},
            ]
        return [*messages, {"role": "user", "content": user}]

    def prompt_for(self, user: str, report: Report) -> tuple[list[int], str]:
        """(token ids, rendered text) for the next turn. The oldest turns are dropped, with a
        report, while prompt plus ``max_new_tokens`` would overflow the context."""
        dropped = 0
        while True:
            rendered = render_messages(self.tokenizer, self.messages(user, self.turns[dropped:]))
            ids = encode_rendered(self.tokenizer, rendered)
            if len(ids) + self.max_new_tokens <= self.context or dropped == len(self.turns):
                break
            dropped += 1
        if dropped:
            self.turns = self.turns[dropped:]
            report(
                f"dropped the oldest {dropped} turn(s) of the conversation to fit the context "
                f"of {self.context} tokens"
            )
        if len(ids) >= self.context:
            raise ContextOverflowError(
                f"this message makes a {len(ids)}-token prompt and the context is "
                f"{self.context} tokens: send a shorter one (or /system with less text)"
            )
        return ids, rendered

    def reply(
        self,
        model: Any,
        user: str,
        options: SamplingOptions,
        on_text: Callable[[str], None],
        report: Report,
        show_prompt: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        ids, rendered = self.prompt_for(user, report)
        if show_prompt is not None:
            show_prompt(rendered)
        result = generate_text(model, self.tokenizer, ids, options, on_text, report=report)
        self.turns.append((user, result.text))
        return result


def chat_loop(
    model: Any,
    tokenizer: Any,
    options: SamplingOptions,
    lines: Iterable[str],
    write: Callable[[str], None],
    report: Report,
    system: str | None = None,
    show_prompt: Callable[[str], None] | None = None,
) -> ChatSession:
    """Talk until ``lines`` end or ``/quit``: each line is a user message or a command."""
    session = ChatSession(tokenizer, context_length_of(model), options.max_new_tokens, system)
    for line in lines:
        text = line.rstrip("\r\n")
        command, _, argument = text.strip().partition(" ")
        if not text.strip():
            continue
        if command == "/quit":
            break
        if command == "/reset":
            session.turns = []
            report("conversation cleared")
            continue
        if command == "/system":
            session.system = argument.strip() or None
            report(f"system message {'set' if session.system else 'removed'}")
            continue
        if command.startswith("/") and command[1:].isalpha():
            report(f"unknown command {command}; {COMMANDS_HELP}")
            continue
        try:
            session.reply(model, text, options, write, report, show_prompt)
        except ContextOverflowError as err:
            report(str(err))
            continue
        except KeyboardInterrupt:
            report("interrupted")
        write("\n")
    return session
