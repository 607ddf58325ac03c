"""Structured logs: one event per line, for people (``text``) or for machines (``json``).

Every record goes through a `SecretMasker` before it is formatted, so a configured secret
that slips into a message, an extra field or a traceback is printed as ``********``. Code
must still never log secrets; the masker is the last line of defence.

A `TerminalHandler` shares its stream with the live status line of ``trawl run``
(`trawl._status`): it erases the status line, writes the record, and draws it again.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO
from urllib.parse import quote

from pydantic import BaseModel, SecretStr

MASK = "********"
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}

_LEVEL_COLOURS = {"DEBUG": "\x1b[2m", "INFO": "\x1b[36m", "WARNING": "\x1b[33m",
                  "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``, in the order they were set."""
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")}


def _utc(created: float) -> str:
    secs = int(created)
    millis = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-25T09:41:44.123Z WARNING trawl.scrape: message key=value``.

    Newlines inside a message are written as ``\\n`` so that each event stays on one
    line; a traceback follows on indented lines.

    Args:
      colour: Colour the level name (for a terminal).
    """

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname
        if self.colour:
            level = f"{_LEVEL_COLOURS.get(level, '')}{level:<7}\x1b[0m"
        else:
            level = f"{level:<7}"
        message = record.getMessage().replace("\n", "\\n")
        line = f"{_utc(record.created)} {level} {record.name}: {message}"
        fields = extras(record)
        if fields:
            line += " " + " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        trace = _trace(self, record)
        if trace:
            line += "\n" + "\n".join("    " + t for t in trace.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the extra
    fields, and ``exception`` (the traceback as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            event.setdefault(key, value)
        trace = _trace(self, record)
        if trace:
            event["exception"] = trace
        return json.dumps(event, ensure_ascii=False, default=str)


def _trace(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        record.exc_text = record.exc_text or formatter.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class SecretMasker(logging.Filter):
    """Replaces every known secret in a record by ``********`` (a handler filter).

    The message is rendered (``msg % args``) and masked; extra fields and the traceback
    are masked too. Each secret is also masked URL-encoded and JSON-escaped, and
    `config_secrets` adds ``username:password`` pairs in their base64 form (a Basic
    ``Authorization`` header).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these values too (secrets of earlier configurations stay masked)."""
        found = set(self._secrets)
        for secret in secrets:
            if secret:
                found.add(secret)
                found.add(quote(secret, safe=""))
                found.add(json.dumps(secret, ensure_ascii=False)[1:-1])  # inside JSON text
        with self._lock:
            # Longest first, so that a secret containing another is masked whole.
            self._secrets = tuple(sorted(found, key=lambda s: (-len(s), s)))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller
            message = f"{record.msg} (with arguments {record.args!r})"
        record.msg = self.mask(message)
        record.args = None
        for key, value in extras(record).items():
            if isinstance(value, str):
                setattr(record, key, self.mask(value))
            elif not isinstance(value, int | float | bool | type(None)):
                text = json.dumps(value, default=str)
                masked = self.mask(text)
                if masked != text:
                    setattr(record, key, masked)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


_SECRET_FILE_MAX = 64 * 1024


def config_secrets(config: Any) -> list[str]:
    """Every secret value in a loaded `trawl.Config`: the ``SecretStr`` fields of its
    scrapers, discoverers, sinks, processors and ``[http]`` section, at any depth; the
    base64 ``username:password`` of models that have both; and what the files named by
    ``*token_file`` and ``*password_file`` keys hold now."""
    models: list[Any] = [*config.scrapers, config.http]
    models += [c for _, c in config.discoverers] + [c for _, c in config.sinks]
    models += [c for entries in config.processors.values() for _, c in entries]
    return sorted(set(_secrets_in(models)) - {""})


def _secrets_in(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        names = type(value).model_fields
        for name in names:
            # ``username`` + ``password``, ``basic_auth_username`` + ``basic_auth_password``
            if name.endswith("username") and name[:-8] + "password" in names:
                user = getattr(value, name, "")
                password = getattr(value, name[:-8] + "password", None)
                if isinstance(password, SecretStr) and password.get_secret_value():
                    pair = f"{user}:{password.get_secret_value()}".encode()
                    yield base64.b64encode(pair).decode()
            field = getattr(value, name, None)
            if name.endswith(("token_file", "password_file")) and isinstance(field, str) \
                    and field:
                yield _read_secret_file(field)
            yield from _secrets_in(field)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _secrets_in(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _secrets_in(v)


def _read_secret_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(_SECRET_FILE_MAX).strip()
    except OSError:
        return ""  # the component that reads it reports the problem


class TerminalHandler(logging.StreamHandler[TextIO]):
    """A stream handler that keeps a one-line status at the bottom of a terminal.

    While a status is shown, each record is written above it: the status line is erased,
    the record written, and the status drawn again.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.status = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self.acquire()
            try:
                if self.status:
                    text = "\r\x1b[K" + text + "\n" + self.status
                else:
                    text += "\n"
                self.stream.write(text)
                self.stream.flush()
            finally:
                self.release()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def show_status(self, text: str) -> None:
        """Draw (or, with ``""``, erase) the status line."""
        self.acquire()
        try:
            if text or self.status:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
            self.status = text
        finally:
            self.release()


_TUNED = ("httpx", "httpcore")


class Logging:
    """trawl's logging as `setup` installed it: the handler and the secret masker.

    `restore` puts back the logging configuration `setup` replaced (for ``trawl.main()``
    called inside another program, such as a test).
    """

    def __init__(self, handler: TerminalHandler, masker: SecretMasker, fmt: str) -> None:
        self.handler = handler
        self.masker = masker
        self.format = fmt
        root = logging.getLogger()
        self._saved = (list(root.handlers), root.level,
                       {name: logging.getLogger(name).level for name in _TUNED})

    def restore(self) -> None:
        handlers, level, levels = self._saved
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, tuned in levels.items():
            logging.getLogger(name).setLevel(tuned)

    @property
    def interactive(self) -> bool:
        """Text logs to a terminal: the place for a live status line."""
        return self.format == "text" and isatty(self.handler.stream)


def setup(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> Logging:
    """Send every log record at ``level`` or above to ``stream`` (standard error).

    Args:
      level: ``debug``, ``info``, ``warning`` or ``error``.
      fmt: ``text`` (colour on a terminal) or ``json`` (one object per line).
      stream: Where to write (default: ``sys.stderr``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")
    stream = stream if stream is not None else sys.stderr
    handler = TerminalHandler(stream)
    masker = SecretMasker()
    handler.addFilter(masker)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(colour=isatty(stream)))
    logs = Logging(handler, masker, fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # httpx logs every request at INFO: shown only at debug level. httpcore's debug
    # logs trace every socket operation: never shown.
    logging.getLogger("httpx").setLevel(logging.INFO if level == "debug" else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return logs


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
