"""The server's own settings, light to import (the CLI reads the defaults before FastAPI loads)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_PREFIX_CACHE_MB = 256  # keys and values of prompts kept for reuse (0: off)


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def authorizes(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value lets a caller in: any, without a key; else
        ``Bearer KEY`` (the scheme's case does not matter, RFC 9110), compared in constant time."""
        if not self.api_key:
            return True
        scheme, _, token = (header or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )
