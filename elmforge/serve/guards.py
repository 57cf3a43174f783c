"""Checks on a request body before the protocol reads it, and what a client that leaves early gets.

Kept apart from the routes (app.py) so each is one call there.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request

from elmforge.errors import invalid_text
from elmforge.serve.protocol import APIError

LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: one line, in its format


def refuse_invalid_text(body: Any) -> None:
    """A 400 naming the field for the first string in ``body`` that is not valid Unicode text: JSON
    may spell a lone surrogate (``"\\ud800"``), which no tokenizer can encode. The walk is a loop,
    not a recursion: the body may nest as deep as the JSON parser allowed."""
    pending: list[tuple[str | None, Any]] = [(None, body)]
    while pending:
        field, value = pending.pop()
        if isinstance(value, str):
            problem = invalid_text(value)
            if problem:
                where = f"{field}: " if field else ""
                raise APIError(400, f"{where}{problem}", param=field)
        elif isinstance(value, dict):
            for key, item in value.items():
                if invalid_text(key):
                    raise APIError(400, f"a field name is {invalid_text(key)}", param=field)
                pending.append((field or key, item))
        elif isinstance(value, list):
            pending.extend((field, item) for item in value)


def client_gone(request: Request) -> APIError:
    """The answer (that nobody will read) to a client that closed its connection before sending
    the body its Content-Length announced; the server logs one line, not a traceback."""
    client = request.client
    who = f"{client.host}:{client.port}" if client else "a client"
    declared = request.headers.get("content-length", "?")
    LOG.warning(
        "%s %s: %s closed the connection before sending its body (Content-Length %s)",
        request.method,
        request.url.path,
        who,
        declared,
    )
    return APIError(400, "the connection closed before the whole request body arrived")
