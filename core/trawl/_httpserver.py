"""A small HTTP/1.1 server on Trio for trawl's own endpoints."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("trawl.http")

Response = tuple[int, str, bytes]
"""``(status, content type, body)``."""
Handler = Callable[[str, str], Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
MAX_HEAD = 16 * 1024


def split_address(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


async def serve(bind: str, handler: Handler, *,
                task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                ) -> None:
    """Serve ``handler(method, target)`` on ``host:port`` until cancelled."""
    host, port = split_address(bind)

    async def connection(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                status, ctype, body = await _one_request(stream, handler)
                head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                        "Connection: close\r\n\r\n").encode()
                await stream.send_all(head + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_tcp(connection, port, host=host, task_status=task_status)


async def _one_request(stream: trio.SocketStream, handler: Handler) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return 431, "text/plain", b"request head too large\n"
        chunk = await stream.receive_some(4096)
        if not chunk:
            return 400, "text/plain", b"incomplete request\n"
        data += chunk
    request_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return 400, "text/plain", b"bad request line\n"
    method, target, _ = parts
    try:
        return await handler(method, target)
    except Exception:
        log.exception("handler failed for %s %s", method, target)
        return 500, "text/plain", b"internal error\n"
