"""The HTTP side of ``elmforge serve``: a FastAPI app in OpenAI's shapes, over the scheduler.

Routes: ``GET /health`` (always open), ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``Authorization: Bearer KEY`` when the server has a key) and
``GET /`` (the chat page). Every failure is OpenAI's error body with a 4xx/5xx status; nothing a
client sends can raise through to uvicorn. Streams are server-sent events (sse-starlette);
when a client disconnects, streaming or not, its rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from elmforge.errors import ElmforgeError
from elmforge.serve.guards import client_gone, refuse_invalid_text
from elmforge.serve.metrics import ServeMetrics
from elmforge.serve.operations import (
    JOBS_KEY,
    RequestLogMiddleware,
    add_operation_routes,
    needs_key,
    stderr_log,
)
from elmforge.serve.protocol import APIError, Plan, ServeContext, parse_chat, parse_completion
from elmforge.serve.responses import ChatFormat, CompletionFormat, ResponseFormat
from elmforge.serve.scheduler import Job, QueueFullError, Scheduler
from elmforge.serve.settings import ServerSettings

STATIC_DIR = resources.files("elmforge.serve") / "static"


class BodyTooLarge(Exception):
    pass


def error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class GuardMiddleware:
    """Refuses oversized bodies (413) and, with an API key, unauthenticated ``/v1/`` calls (401)
    before any route runs. A plain ASGI middleware, so streaming responses pass untouched."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.settings.max_request_bytes
        authorized = self.settings.authorizes(headers.get("authorization"))
        if needs_key(scope["path"]) and not authorized:
            error = APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )
            return await error_response(error)(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await error_response(too_large(limit))(scope, receive, send)
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, counting_receive, send)


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


async def read_json(request: Request, limit: int) -> Any:
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise too_large(limit) from None
    except ClientDisconnect:  # fewer bytes than its Content-Length, then gone: nobody to answer
        raise client_gone(request) from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise APIError(
            400, f"the request body is not valid JSON: {err}", code="invalid_json"
        ) from None
    refuse_invalid_text(body)
    return body


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(
    scheduler: Scheduler,
    context: ServeContext,
    tokenizer: Any,
    settings: ServerSettings,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    metrics = metrics or ServeMetrics()
    metrics.watch(scheduler.stats)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(
        title="elmforge serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(RequestLogMiddleware, metrics=metrics, log=stderr_log)  # outermost
    add_operation_routes(
        app, context, tokenizer, metrics, lambda r: read_json(r, settings.max_request_bytes)
    )
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {error.detail}"
        return error_response(APIError(error.status_code, message, type=kind))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(APIError(400, f"invalid request: {error.errors()[0]['msg']}"))

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        if not settings.authorizes(request.headers.get("authorization")):
            return {"status": "ok"}  # open to all, so it tells a stranger only that it is up
        return {"status": "ok", "model": settings.model_name, **scheduler.stats()}

    @app.get("/")
    async def chat_page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    def model_card(name: str = settings.model_name) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "elmforge"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(), *map(model_card, context.adapters)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id in context.adapters:
            return model_card(model_id)
        if model_id not in context.model_names:
            raise APIError(404, f"the model '{model_id}' does not exist", param="model",
                           code="model_not_found")  # fmt: skip
        return model_card()

    async def answer(request: Request, parse: Callable, format_class: type) -> Response:
        body = await read_json(request, settings.max_request_bytes)
        try:
            plan: Plan = parse(body, context)
        except ElmforgeError as err:  # e.g. the model's own chat template failed
            raise APIError(400, str(err)) from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def notify(kind: str, job: Job, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, (kind, job, payload))

        jobs = [
            Job(
                prompt_ids=prompt,
                options=plan.options,
                logprobs=plan.logprobs,
                prompt_logprobs=plan.echo and plan.logprobs is not None,
                stream=plan.stream,
                index=i,
                notify=notify,
                grammar=plan.grammar,
                adapter=plan.adapter,
            )
            for i, prompt in enumerate(plan.prompts)
        ]
        setattr(request.state, JOBS_KEY, jobs)  # for the request log
        answer_format = format_class(plan, jobs, plan.adapter or settings.model_name, tokenizer)
        try:
            scheduler.submit(jobs)
        except QueueFullError as err:
            raise APIError(503, str(err), type="server_error", code="server_overloaded") from None
        if plan.stream:
            return EventSourceResponse(stream(answer_format, jobs, events), sep="\n")
        return await collect(request, answer_format, jobs, events)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer(request, parse_completion, CompletionFormat)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, parse_chat, ChatFormat)

    return app


def failure(jobs: list[Job]) -> APIError | None:
    errors = [job.error for job in jobs if job.error]
    return APIError(500, errors[0], type="server_error") if errors else None


async def collect(
    request: Request, answer_format: ResponseFormat, jobs: list[Job], events: asyncio.Queue
) -> Response:
    """Wait for every job; cancel them all if the client disconnects first."""
    gone = asyncio.create_task(wait_for_disconnect(request))
    try:
        remaining = len(jobs)
        while remaining:
            event = asyncio.create_task(events.get())
            await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                event.cancel()
                return Response(status_code=499)  # nobody will read it
            remaining -= event.result()[0] == "done"
    finally:
        gone.cancel()
        for job in jobs:
            job.cancel()
    error = failure(jobs)
    if error is not None:
        return error_response(error)
    return JSONResponse(answer_format.response())


async def stream(
    answer_format: ResponseFormat, jobs: list[Job], events: asyncio.Queue
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's stream format, ending with ``[DONE]``. sse-starlette
    closes this generator when the client disconnects; ``finally`` then cancels the jobs."""
    started: set[int] = set()
    try:
        remaining = len(jobs)
        while remaining:
            kind, job, payload = await events.get()
            if job.index not in started:
                started.add(job.index)
                if not job.error and (first := answer_format.first_chunk(job)) is not None:
                    yield json.dumps(first)
            if kind == "delta":
                yield json.dumps(answer_format.delta_chunk(job, *payload))
                continue
            remaining -= 1
            if job.error:
                yield json.dumps(APIError(500, job.error, type="server_error").body())
            else:
                yield json.dumps(answer_format.final_chunk(job))
        if answer_format.plan.include_usage:
            yield json.dumps(answer_format.usage_chunk())
        yield "[DONE]"
    finally:
        for job in jobs:
            job.cancel()
