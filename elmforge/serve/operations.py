"""The server's operational routes and request log, kept apart from the OpenAI routes in app.py.

- ``GET /metrics``: Prometheus' text format (:mod:`elmforge.serve.metrics`).
- ``POST /tokenize`` and ``POST /detokenize``: vLLM's shapes (``{"prompt": ...}`` or
  ``{"messages": [...]}`` -> ``{"count", "max_model_len", "tokens"[, "token_strs"]}``;
  ``{"tokens": [...]}`` -> ``{"prompt"}``), behind the API key like ``/v1/``.
- :class:`RequestLogMiddleware`: one line per request on stderr (method, path, status, prompt
  and generated tokens, duration) and the request counters of ``/metrics``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from elmforge.serve.metrics import CONTENT_TYPE, ServeMetrics
from elmforge.serve.protocol import ServeContext, bad, chat_messages, check_fields, get_bool

# Paths the API key guards besides /v1/ (vLLM serves these at the root).
KEYED_PATHS = ("/tokenize", "/detokenize")
# Paths counted under their own name in /metrics; anything else is "other" (bounded labels).
ENDPOINTS = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/metrics",
        "/tokenize",
        "/detokenize",
        "/",
    }
)
JOBS_KEY = "elmforge_jobs"  # the scope's state entry where a generating route leaves its jobs


def needs_key(path: str) -> bool:
    return path.startswith("/v1/") or path in KEYED_PATHS


class RequestLogMiddleware:
    """Logs one line per HTTP request once its last byte is sent, and counts it."""

    def __init__(self, app: Any, metrics: ServeMetrics, log: Callable[[str], None]) -> None:
        self.app, self.metrics, self.log = app, metrics, log

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        state = scope.setdefault("state", {})  # the route leaves its jobs here (JOBS_KEY)
        status = 500  # what the client sees if the app fails before answering

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.monotonic() - started
            jobs = state.get(JOBS_KEY, [])
            prompt = sum(len(job.prompt_ids) for job in jobs)
            generated = sum(len(job.generated) for job in jobs)
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            self.metrics.request_done(endpoint, status, prompt, seconds)
            tokens = f" prompt={prompt} generated={generated}" if jobs else ""
            self.log(f"{scope['method']} {path} {status}{tokens} {seconds:.3f}s")


def stderr_log(line: str) -> None:
    print(f"elmforge serve: {line}", file=sys.stderr, flush=True)


TOKENIZE_FIELDS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt",
                   "return_token_strs"}  # fmt: skip


def tokenize(body: Any, ctx: ServeContext, tokenizer: Any) -> dict[str, Any]:
    body = check_fields(body, TOKENIZE_FIELDS, ctx)
    if ("prompt" in body) == ("messages" in body):
        raise bad(None, "send exactly one of prompt (a string) or messages (a chat)")
    if "messages" in body:
        if not get_bool(body, "add_generation_prompt", True):
            raise bad("add_generation_prompt", "add_generation_prompt: only true is supported")
        tokens = ctx.render_chat(chat_messages(body["messages"]))
    else:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise bad("prompt", "prompt: expected a string")
        if get_bool(body, "add_special_tokens", True):
            tokens = ctx.encode(prompt)
        else:
            tokens = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer: dict[str, Any] = {"count": len(tokens), "max_model_len": ctx.context, "tokens": tokens}
    if get_bool(body, "return_token_strs"):
        answer["token_strs"] = tokenizer.convert_ids_to_tokens(tokens)
    return answer


def detokenize(body: Any, ctx: ServeContext, tokenizer: Any) -> dict[str, Any]:
    body = check_fields(body, {"model", "tokens"}, ctx)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise bad("tokens", "tokens: expected a list of token ids")
    outside = [t for t in tokens if not 0 <= t < ctx.vocab_size]
    if outside:
        raise bad("tokens", f"tokens: {outside[0]} is not a token id (vocabulary {ctx.vocab_size})")
    return {"prompt": tokenizer.decode(tokens)}


def add_operation_routes(
    app: FastAPI,
    ctx: ServeContext,
    tokenizer: Any,
    metrics: ServeMetrics,
    read_json: Callable[[Request], Any],
) -> None:
    """``/metrics``, ``/tokenize`` and ``/detokenize`` on ``app``."""

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize_route(request: Request) -> dict[str, Any]:
        return tokenize(await read_json(request), ctx, tokenizer)

    @app.post("/detokenize")
    async def detokenize_route(request: Request) -> dict[str, Any]:
        return detokenize(await read_json(request), ctx, tokenizer)
