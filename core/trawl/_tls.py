"""TLS client contexts and readable network errors, shared by the scraper and plugins."""

from __future__ import annotations

import functools
import os
import ssl


def tls_context(*, ca: str = "", cert: str = "", key: str = "",
                insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context for Kapacitor's ``ssl-ca``, ``ssl-cert``, ``ssl-key`` and
    ``insecure-skip-verify`` keys, trusting the system's CAs when ``ca`` is empty.

    Contexts are shared: loading certificates costs tens of milliseconds, which a context per
    target or per request would spend again and again on the event loop. A file that
    changes (by modification time) gives a new context.

    Raises:
      OSError, ssl.SSLError: a file cannot be read or is not a certificate or key.
    """
    stamps = tuple(_mtime(f) for f in (ca, cert, key))
    return _context(ca, cert, key, insecure, stamps)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return -1


@functools.lru_cache(maxsize=64)
def _context(ca: str, cert: str, key: str, insecure: bool,
             stamps: tuple[int, ...]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca or None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx


def error_reason(exc: BaseException) -> str:
    """The innermost non-empty message along an exception's causes and groups.

    httpx's own exceptions often have an empty message; the reason (``Connection refused``,
    ``certificate verify failed``) sits further down the chain.
    """
    chain: list[BaseException] = [exc]
    while len(chain) < 10:
        last = chain[-1]
        nxt = last.__cause__ or last.__context__
        if isinstance(last, BaseExceptionGroup) and last.exceptions:
            nxt = last.exceptions[0]
        if nxt is None or nxt in chain:
            break
        chain.append(nxt)
    return next((str(e) for e in reversed(chain) if str(e)), type(exc).__name__)


def is_tls_error(exc: BaseException) -> bool:
    """Whether an ``ssl.SSLError`` is anywhere along the exception's causes."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return True
        if isinstance(exc, BaseExceptionGroup) and any(is_tls_error(e) for e in exc.exceptions):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False
