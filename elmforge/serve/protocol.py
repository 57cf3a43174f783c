"""OpenAI's request shapes, checked: every bad request becomes an :class:`APIError` (a 4xx with
OpenAI's error body) that names the field, never an exception from deep inside.

Accepted, beyond OpenAI's own fields: vLLM's ``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens`` and ``ignore_eos`` (benchmark tools send them). OpenAI fields this server does
not implement (tools, ``logit_bias``, ``n`` > 1, ...) are refused by name rather than ignored,
and so are fields nobody defines (a typo such as ``max_token`` must not pass silently).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elmforge.errors import ElmforgeError, OptionError
from elmforge.infer.generate import SamplingOptions

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


class APIError(Exception):
    """An error response: HTTP ``status`` and OpenAI's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# Fields each endpoint understands. OpenAI's that change nothing here are accepted and ignored.
COMMON_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream",
    "stream_options", "presence_penalty", "frequency_penalty", "logit_bias", "user",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "logprobs",
}  # fmt: skip
# Structured output (serve/grammar.py): OpenAI's response_format, and vLLM's constraints, each
# both a field guided_<kind> and a key <kind> of one structured_outputs object.
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar")
GUIDED_FIELDS = tuple(f"guided_{kind}" for kind in STRUCTURED_KINDS)
STRUCTURED_FIELDS = {"response_format", "structured_outputs", *GUIDED_FIELDS}
COMPLETION_FIELDS = COMMON_FIELDS | STRUCTURED_FIELDS | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON_FIELDS | STRUCTURED_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "store", "metadata", "service_tier",
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "modalities",
    "audio", "prediction", "reasoning_effort",
}  # fmt: skip
# Fields accepted only at their "off" value: the feature is not implemented.
UNSUPPORTED = {
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "parallel_tool_calls": (None, True, False),
}
# SamplingOptions field -> request field, for messages.
API_NAMES = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "min_new_tokens": "min_tokens",
    "prompt_lookup": "prompt_lookup",
}


@dataclass
class ServeContext:
    """What request checking needs to know about the served model."""

    model_names: tuple[str, ...]  # the first is the served name; the others also match
    vocab_size: int
    context: int
    max_tokens_limit: int
    encode: Callable[[str], list[int]]  # text prompt -> ids (bos added)
    render_chat: Callable[[list[dict[str, str]]], list[int]]  # messages -> ids
    speculative: bool = False
    # body -> compiled grammar for its response_format, or None (serve/grammar.py)
    grammar: Callable[[dict], Any] | None = None
    adapters: tuple[str, ...] = ()  # model names that pick a per-request adapter


@dataclass
class Plan:
    """A checked request: one prompt per choice, and how to answer."""

    prompts: list[list[int]]
    prompt_texts: list[str | None]  # the text given (None: given as token ids)
    options: SamplingOptions
    stream: bool
    include_usage: bool
    logprobs: int | None  # alternatives per generated token; None: no logprobs
    echo: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    grammar: Any = None  # the compiled response_format constraint, or None
    adapter: str | None = None  # the adapter the request's model names, or None (the base)


# -- typed field readers ------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(body: dict, name: str, default: Any, accepts: Callable[[Any], bool], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not accepts(value):
        raise bad(name, f"{name}: expected {what}, got {type(value).__name__}")
    return value


def get_int(body: dict, name: str, default: Any = None) -> Any:
    return _typed(body, name, default, _is_int, "an integer")


def get_number(body: dict, name: str, default: Any = None) -> Any:
    value = _typed(body, name, default, _is_number, "a number")
    return float(value) if value is not None else None


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    return _typed(body, name, default, lambda v: isinstance(v, bool), "true or false")


def get_stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "stop: expected a string or a list of strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad("stop", f"stop: at most {MAX_STOP_STRINGS} stop strings")
    if any(not s for s in stops):
        raise bad("stop", "stop: stop strings must not be empty")
    return tuple(stops)


# -- checks shared by both endpoints ------------------------------------------------------------
def check_fields(body: Any, allowed: set[str], ctx: ServeContext) -> dict:
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    for name, off_values in UNSUPPORTED.items():
        if name in body and body[name] not in off_values:
            raise bad(name, f"{name} is not supported by this server")
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise bad("model", "model: expected a string")
        if model not in ctx.model_names and model not in ctx.adapters:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this server serves '{ctx.model_names[0]}'",
                param="model",
                code="model_not_found",
            )
    for name in ("n", "best_of"):
        value = get_int(body, name, 1)
        if value != 1:
            raise bad(name, f"{name}: only 1 is supported, got {value}")
    return body


def max_tokens_of(body: dict, default: int | None) -> tuple[int | None, str]:
    """(max_tokens or ``default``, the field it came from)."""
    given = {
        name: get_int(body, name)
        for name in ("max_tokens", "max_completion_tokens")
        if body.get(name) is not None
    }
    if len(set(given.values())) > 1:
        raise bad("max_completion_tokens", "max_tokens and max_completion_tokens disagree")
    name = next(iter(given), "max_tokens")
    return given.get(name, default), name


def build_options(body: dict, max_tokens: int, max_tokens_name: str) -> SamplingOptions:
    options = SamplingOptions(
        max_new_tokens=max_tokens,
        temperature=get_number(body, "temperature", 1.0),
        top_k=get_int(body, "top_k"),
        top_p=get_number(body, "top_p"),
        min_p=get_number(body, "min_p"),
        repetition_penalty=get_number(body, "repetition_penalty"),
        presence_penalty=get_number(body, "presence_penalty", 0.0),
        frequency_penalty=get_number(body, "frequency_penalty", 0.0),
        seed=get_int(body, "seed"),
        stop=get_stop(body),
        min_new_tokens=get_int(body, "min_tokens", 0),
        ignore_eos=get_bool(body, "ignore_eos"),
    )
    try:
        return options.check()
    except OptionError as err:  # it names the Python field: name the request's instead
        param = max_tokens_name if err.option == "max_new_tokens" else API_NAMES[err.option]
        raise bad(param, err.template.replace("{option}", param)) from None


def check_length(
    prompt: list[int], max_tokens: int | None, name: str, ctx: ServeContext, what: str
) -> int:
    """``max_tokens`` (or what the context leaves) after checking both against the limits."""
    room = ctx.context - len(prompt)
    if max_tokens is not None and max_tokens > ctx.max_tokens_limit:
        raise bad(name, f"{name} {max_tokens}: this server allows at most {ctx.max_tokens_limit}")
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        requested = len(prompt) + (max_tokens or 0)
        raise bad(
            what if room <= 0 else name,
            f"this model's maximum context length is {ctx.context} tokens; you requested "
            f"{requested} tokens ({len(prompt)} in the {what}, {max_tokens or 0} in the "
            f"completion); reduce the {what} or {name}",
            code="context_length_exceeded",
        )
    return max_tokens if max_tokens is not None else min(room, ctx.max_tokens_limit)


def stream_settings(body: dict) -> tuple[bool, bool]:
    stream = get_bool(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad("stream_options", "stream_options: only allowed when stream is true")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", 'stream_options: expected {"include_usage": true|false}')
    return stream, get_bool(options, "include_usage")


# -- /v1/completions ----------------------------------------------------------------------------
def completion_prompts(prompt: Any, ctx: ServeContext) -> tuple[list[list[int]], list[str | None]]:
    """A string, a list of strings, a list of token ids or a list of such lists."""
    if isinstance(prompt, str):
        return [ctx.encode(prompt)], [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise bad("prompt", "prompt: expected a string, a list of strings or token id lists")
    if all(_is_int(t) for t in prompt):
        prompt = [prompt]
    ids, texts = [], []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            ids.append(ctx.encode(item))
            texts.append(item)
        elif isinstance(item, list) and item and all(_is_int(t) for t in item):
            outside = [t for t in item if not 0 <= t < ctx.vocab_size]
            if outside:
                raise bad(
                    "prompt",
                    f"prompt[{i}]: token id {outside[0]} is outside the vocabulary "
                    f"(0 to {ctx.vocab_size - 1})",
                )
            ids.append(list(item))
            texts.append(None)
        else:
            raise bad("prompt", f"prompt[{i}]: expected a string or a non-empty list of token ids")
    if not all(ids):
        raise bad("prompt", "prompt: a prompt encodes to no tokens")
    return ids, texts


def parse_completion(body: Any, ctx: ServeContext) -> Plan:
    body = check_fields(body, COMPLETION_FIELDS, ctx)
    if "prompt" not in body:
        raise bad("prompt", "prompt: required")
    prompts, texts = completion_prompts(body["prompt"], ctx)
    max_tokens, name = max_tokens_of(body, DEFAULT_COMPLETION_TOKENS)
    logprobs = get_int(body, "logprobs")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise bad("logprobs", f"logprobs {logprobs}: must be between 0 and {MAX_LOGPROBS}")
    stream, include_usage = stream_settings(body)
    echo = get_bool(body, "echo")
    options = build_options(body, max_tokens, name)
    for prompt in prompts:
        check_length(prompt, max_tokens, name, ctx, "prompt")
    check_speculative(ctx, logprobs)
    grammar = response_grammar(body, ctx)
    return Plan(prompts, texts, options, stream, include_usage, logprobs, echo=echo,
                grammar=grammar, adapter=request_adapter(body, ctx))  # fmt: skip


# -- /v1/chat/completions -----------------------------------------------------------------------
def message_content(content: Any, index: int) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise bad(
        "messages",
        f"messages[{index}].content: expected a string or a list of text parts "
        "(this model reads text only)",
    )


def chat_messages(messages: Any) -> list[dict[str, str]]:
    from elmforge.data.chat import check_messages

    if not isinstance(messages, list) or not messages:
        raise bad("messages", "messages: expected a non-empty list of {role, content} objects")
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad("messages", f"messages[{i}]: expected an object with role and content")
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise bad("messages", f"messages[{i}]: unsupported field {sorted(extra)[0]}")
        plain.append(
            {"role": message.get("role"), "content": message_content(message.get("content"), i)}
        )
    try:
        return check_messages(plain)
    except ElmforgeError as err:
        raise bad("messages", str(err)) from None


def parse_chat(body: Any, ctx: ServeContext) -> Plan:
    body = check_fields(body, CHAT_FIELDS, ctx)
    messages = chat_messages(body.get("messages"))
    prompt = ctx.render_chat(messages)
    max_tokens, name = max_tokens_of(body, None)
    max_tokens = check_length(prompt, max_tokens, name, ctx, "messages")
    logprobs = get_bool(body, "logprobs")
    top = get_int(body, "top_logprobs")
    if top is not None:
        if not logprobs:
            raise bad("top_logprobs", "top_logprobs: requires logprobs to be true")
        if not 0 <= top <= MAX_LOGPROBS:
            raise bad("top_logprobs", f"top_logprobs {top}: must be between 0 and {MAX_LOGPROBS}")
    stream, include_usage = stream_settings(body)
    options = build_options(body, max_tokens, name)
    alternatives = (top or 0) if logprobs else None
    check_speculative(ctx, alternatives)
    grammar = response_grammar(body, ctx)
    return Plan([prompt], [None], options, stream, include_usage, alternatives,
                messages=messages, grammar=grammar, adapter=request_adapter(body, ctx))  # fmt: skip


def request_adapter(body: dict, ctx: ServeContext) -> str | None:
    model = body.get("model")
    return model if model in ctx.adapters else None


def response_grammar(body: dict, ctx: ServeContext) -> Any:
    """The constraint for ``response_format`` (json_object, json_schema), or None."""
    if ctx.grammar is not None:
        return ctx.grammar(body)
    if body.get("response_format") not in (None, {"type": "text"}):
        raise bad("response_format", "response_format is not supported by this server")
    for name in sorted(STRUCTURED_FIELDS - {"response_format"}):
        if body.get(name) is not None:
            raise bad(name, f"{name} is not supported by this server")
    return None


def check_speculative(ctx: ServeContext, logprobs: int | None) -> None:
    if ctx.speculative and logprobs is not None:
        raise bad(
            "logprobs",
            "logprobs are not available while the server decodes speculatively "
            "(--prompt-lookup / --draft-model)",
        )
