"""``elmforge serve``: load a model, start the scheduler, run the app on uvicorn.

Light to import: numbers and the port are checked before torch, transformers and FastAPI load.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elmforge.errors import OptionError
from elmforge.serve.settings import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PREFIX_CACHE_MB,
    ServerSettings,
)

GRACE_SECONDS = 5  # how long running requests may finish after SIGTERM/SIGINT


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning to print when ``host`` makes the server reachable from other machines."""
    if is_loopback(host):
        return None
    return f"elmforge serve: warning: listening on {host}, reachable from other machines" + (
        "" if api_key else " without an API key (--api-key)"
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port; the chosen one is printed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OptionError(
            "port", f"{{option}} {port} on {host}: cannot listen ({err.strerror})"
        ) from None
    sock.listen(2048)
    return sock


def serve(
    model: str,
    *,
    tokenizer: Any = None,
    adapter: str | list[str] | None = None,
    device: str = "auto",
    dtype: str = "auto",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    max_queue: int = 256,
    max_tokens_limit: int | None = None,
    served_name: str | None = None,
    draft_model: str | None = None,
    prompt_lookup: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    prefill_chunk: int | None = None,
    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
) -> None:
    """Serve ``model`` over HTTP until interrupted."""
    for option, value, least in (
        ("max_batch", max_batch, 1),
        ("max_queue", max_queue, 1),
        ("max_tokens_limit", max_tokens_limit, 1),
        ("prompt_lookup", prompt_lookup, 1),
        ("max_request_bytes", max_request_bytes, 1024),
        ("port", port, 0),
        ("prefill_chunk", prefill_chunk, 1),
        ("prefix_cache_mb", prefix_cache_mb, 0),
    ):
        if value is not None and value < least:
            raise OptionError(option, f"{{option}} {value}: must be at least {least}")
    if not 0 <= port <= 65535:
        raise OptionError("port", f"{{option}} {port}: must be between 0 and 65535")
    from elmforge.infer.generate import check_speculative

    check_speculative(prompt_lookup, draft_model)
    from elmforge.modeldir.loading import find_tokenizer

    # What can fail fast does, before the slow imports and the model load.
    find_tokenizer(model, tokenizer)
    sock = bind(host, port)
    from elmforge.infer.chat import encode_rendered, render_messages
    from elmforge.infer.generate import eos_token_ids, load_generator
    from elmforge.modeldir.loading import context_length_of
    from elmforge.serve.adapters import load_named_adapters, parse_adapter_flags
    from elmforge.serve.app import build_app
    from elmforge.serve.grammar import GrammarCompiler, request_grammar
    from elmforge.serve.metrics import ServeMetrics
    from elmforge.serve.protocol import ServeContext
    from elmforge.serve.scheduler import Scheduler

    merged_adapter, named_adapters = parse_adapter_flags(adapter)
    if named_adapters and (draft_model or prompt_lookup):
        raise OptionError(
            "adapter", "{option} NAME=DIR: per-request adapters do not combine with speculative "
            "decoding (--prompt-lookup, --draft-model)"
        )  # fmt: skip
    import torch

    # The model's work runs on the scheduler's thread with all the intra-op threads; this (HTTP)
    # thread keeps one, so the process has one OpenMP team. Measured (OpenELM-270M fp32, 2-core
    # Xeon): a decode step takes 50 ms on the scheduler's thread alone but 58 ms once this thread
    # has a team of its own (more OpenMP threads than CPUs: libgomp stops letting idle workers
    # spin, so each of the step's parallel regions waits for a wake-up); a streamed token came
    # every 60 ms, now every 53 ms. Loading with one thread costs 0.3-0.7 s once.
    model_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded, draft = load_generator(
        model,
        tokenizer=tokenizer,
        adapter=merged_adapter,
        device=device,
        dtype=dtype,
        draft_model=draft_model,
    )
    tok = loaded.tokenizer
    context = context_length_of(loaded.model)
    if max_tokens_limit is not None and max_tokens_limit > context:
        raise OptionError(
            "max_tokens_limit",
            f"{{option}} {max_tokens_limit}: larger than the model's context ({context} tokens)",
        )
    name = served_name or model
    names = tuple(dict.fromkeys([name, model, str(Path(model).expanduser().resolve())]))
    serve_context = ServeContext(
        model_names=names,
        vocab_size=loaded.model.get_input_embeddings().num_embeddings,
        context=context,
        max_tokens_limit=max_tokens_limit or context,
        encode=lambda text: list(tok(text)["input_ids"]),
        render_chat=lambda messages: encode_rendered(tok, render_messages(tok, messages)),
        speculative=draft is not None or bool(prompt_lookup),
        adapters=tuple(named_adapters),
    )
    adapters = load_named_adapters(loaded.model, named_adapters) if named_adapters else None
    grammars = None
    if not serve_context.speculative:
        eos = eos_token_ids(loaded.model, tok)
        grammars = GrammarCompiler(tok, serve_context.vocab_size, eos)
    serve_context.grammar = lambda body: request_grammar(body, grammars)
    metrics = ServeMetrics()
    scheduler = Scheduler(
        loaded.model,
        tok,
        max_batch=max_batch,
        max_queue=max_queue,
        draft_model=draft,
        prompt_lookup=prompt_lookup,
        metrics=metrics,
        prefill_chunk=prefill_chunk,
        prefix_cache_mb=prefix_cache_mb,
        grammars=grammars,
        adapters=adapters,
        threads=model_threads,
    )
    warm_up(scheduler)
    settings = ServerSettings(name, api_key=api_key, max_request_bytes=max_request_bytes)
    app = build_app(scheduler, serve_context, tok, settings, metrics)
    bound_host, bound_port = sock.getsockname()[:2]
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(
        f"elmforge serve: {name} on http://{shown}:{bound_port} (OpenAI API under /v1, "
        f"chat page at /; {loaded.device}, {str(loaded.dtype).removeprefix('torch.')}, "
        f"context {context}, batch up to {max_batch}"
        + (", speculative decoding one request at a time" if serve_context.speculative else "")
        + ")",
        flush=True,
    )
    run_until_signalled(app, sock)


def warm_up(scheduler: Any) -> None:
    """Start the model's thread, building the decode kernels and running each step once there
    first, so the first request pays nothing."""
    if scheduler.speculative:
        scheduler.start()
        return
    print("elmforge serve: warming up the decode step ...", end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    scheduler.start(warm_up=True)
    print(f" done ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)


def run_until_signalled(app: Any, sock: socket.socket) -> None:
    """Run ``app`` on uvicorn until SIGTERM or SIGINT, then shut down gracefully: stop
    accepting, give running requests ``GRACE_SECONDS`` to finish (then cancel them), stop the
    scheduler, and return (the verb exits 0)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own re-raises the signal once shut down, which would end the process
            # with 143/130; a server that stopped cleanly on request has not failed.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            caught = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in caught}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=GRACE_SECONDS,
        lifespan="on",
        access_log=False,
    )
    GracefulServer(config).run(sockets=[sock])
    print("elmforge serve: stopped", file=sys.stderr, flush=True)
