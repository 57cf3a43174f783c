"""The server's own settings, light to import (the CLI reads the defaults before FastAPI loads)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_PREFIX_CACHE_MB = 256  # keys and values of prompts kept for reuse (0: off)


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
