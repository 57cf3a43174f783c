"""`elmforge serve MODEL`: an OpenAI-compatible HTTP server with batching and a chat page."""

from __future__ import annotations

import argparse

from elmforge.cli.options import add_generation_model_flags, generation_load_options
from elmforge.serve.settings import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PREFIX_CACHE_MB

EPILOG = """examples:
  elmforge serve runs/tiny/final
  elmforge serve apple/OpenELM-270M-Instruct --tokenizer llama2-tokenizer.model --port 8080
  elmforge serve MODEL --api-key secret --max-batch 8
then: curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "Once upon a time", "max_tokens": 32}'
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (batched), with a chat page",
        description=(
            "Serve a model directory on /v1/completions, /v1/chat/completions and /v1/models "
            "(OpenAI's shapes, streaming, logprobs and echo for lm-eval), /health, and a chat "
            "page at /. Concurrent requests are decoded together in one batch."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_generation_model_flags(p, named_adapters=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (8000; 0: any free port)")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1/")
    p.add_argument("--served-name", metavar="NAME", help="model id in the API (default: MODEL)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (16)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests waiting for a batch slot before the server answers 503 (256)",
    )
    p.add_argument(
        "--max-tokens-limit",
        type=int,
        metavar="N",
        help="largest max_tokens a request may ask for (default: the model's context)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest request body; larger ones get 413 ({DEFAULT_MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        metavar="N",
        help="read at most N prompt tokens per decode step, so a long prompt does not stall "
        "running streams (default: whole prompts at once)",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=DEFAULT_PREFIX_CACHE_MB,
        metavar="MB",
        help="memory for reusing the keys and values of prompt prefixes already read, least "
        f"recently used evicted ({DEFAULT_PREFIX_CACHE_MB}; 0: off)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from elmforge.serve.server import serve

    serve(
        args.model,
        **generation_load_options(args),
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit,
        served_name=args.served_name,
        prompt_lookup=args.prompt_lookup,
        max_request_bytes=args.max_request_bytes,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_mb=args.prefix_cache_mb,
    )
    return 0
