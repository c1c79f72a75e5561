"""What barenet's web routes share: a bounded JSON body, a 4xx that carries its message, and a
clear error for a port that cannot be listened on."""

from __future__ import annotations

import json
import socket
from typing import Any

from starlette.requests import Request

from ..errors import BarenetError


class BadRequest(Exception):
    """A request answered with `status` (4xx) and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_json(request: Request, limit: int) -> Any:
    """The request's body parsed as JSON, read no further than `limit` bytes.

    Raises: BadRequest 413 for a longer body (by its Content-Length or as it streams in), 400
    for a body that is not JSON.
    """
    too_big = BadRequest(413, f"request body over {limit} bytes")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON ({e})") from None


def check_port(host: str, port: int) -> None:
    """One clear error for a taken port or a wrong host, before uvicorn starts."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise BarenetError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
