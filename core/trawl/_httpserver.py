"""A small HTTP/1.1 server on Trio for trawl's own endpoints: bounded, optionally TLS."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

import trio

log = logging.getLogger("trawl.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_QUERY_PARAMS = 64
MAX_PARAM_LENGTH = 4096
REQUEST_SECONDS = 10.0

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def split_address(bind: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port``, or ``:port`` for every interface) → host, port."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid bind-address {bind!r}: expected host:port")
    host = host.strip("[]")
    return (host or None), int(port)


async def serve(bind: str, handler: Handler, *, ssl_context: ssl.SSLContext | None = None,
                task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                ) -> None:
    """Serve ``handler`` on ``bind`` until cancelled; one request per connection."""
    host, port = split_address(bind)

    async def connection(stream: trio.abc.Stream) -> None:
        try:
            with trio.move_on_after(REQUEST_SECONDS):
                if ssl_context is not None:
                    stream = trio.SSLStream(stream, ssl_context, server_side=True)
                try:
                    request = await _read_request(stream)
                except BadRequest as exc:
                    response = Response.text(exc.status, f"{exc}\n")
                else:
                    try:
                        response = await handler(request)
                    except Exception:
                        log.exception("handler failed for %s %s", request.method, request.path)
                        response = Response.text(500, "internal error\n")
                    if request.method == "HEAD":
                        response = Response(response.status, b"", response.content_type,
                                            {**response.headers,
                                             "Content-Length": str(len(response.body))})
                await stream.send_all(_encode(response))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_tcp(connection, port, host=host, task_status=task_status)


def _encode(response: Response) -> bytes:
    headers = {"Content-Type": response.content_type,
               "Content-Length": str(len(response.body)), "Connection": "close",
               **response.headers}
    head = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode("latin-1") + response.body


async def _read_request(stream: trio.abc.Stream) -> Request:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise BadRequest(431, "request head too large")
        chunk = await stream.receive_some(8192)
        if not chunk:
            raise BadRequest(400, "incomplete request")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    path, _, query_string = target.partition("?")
    if len(query_string) > MAX_PARAM_LENGTH * 4:
        raise BadRequest(414, "query string too long")
    try:
        query = parse_qs(query_string, keep_blank_values=True,
                         max_num_fields=MAX_QUERY_PARAMS) if query_string else {}
    except ValueError:
        raise BadRequest(400, f"more than {MAX_QUERY_PARAMS} query parameters") from None
    if any(len(v) > MAX_PARAM_LENGTH for vs in query.values() for v in vs):
        raise BadRequest(414, "query parameter too long")
    body = b""
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked request bodies are not accepted")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(400, "bad Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise BadRequest(413, f"request body over {MAX_BODY} bytes")
    body = bytes(rest)
    while len(body) < length:
        chunk = await stream.receive_some(min(65536, length - len(body)))
        if not chunk:
            raise BadRequest(400, "incomplete request body")
        body += chunk
    return Request(method, unquote(path), query, headers, body[:length])


def tls_server_context(certificate: str, private_key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certificate, private_key or None)
    return ctx


