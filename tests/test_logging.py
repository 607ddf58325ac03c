"""Logs: one event per line for people (``text``) or as JSON (``--log-format json``); a
failing target logs its first failure and its recovery only; configured secrets never
appear, even at debug level and when a server echoes them back."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from trawl._config import parse_config
from trawl._logging import (
    MASK,
    JsonFormatter,
    SecretMasker,
    TextFormatter,
    config_secrets,
    setup,
)
from trawl.testing import make_registry

from tests.servers import free_port, wait_until
from tests.servers.trawl_process import TargetServer, TrawlProcess

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")


# ------------------------------------------------------------------ formats, in process

def record(msg: str, *args: Any, level: int = logging.WARNING, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("trawl.scrape", level, __file__, 1, msg, args or None, None)
    rec.__dict__.update(extra)
    return rec


def test_text_format_is_one_line_with_level_logger_and_extras():
    rec = record("target %s is down: %s", "http://a/metrics", "line one\nline two",
                 scrape_pool="node", failures=3, note="two words")
    line = TextFormatter().format(rec)
    assert TEXT_LINE.match(line)
    assert "\n" not in line
    assert line.endswith(' WARNING trawl.scrape: target http://a/metrics is down: line one\\n'
                         'line two scrape_pool=node failures=3 note="two words"')


def test_text_format_colours_the_level_only_on_request():
    assert "\x1b[" not in TextFormatter().format(record("x"))
    assert "\x1b[33mWARNING" in TextFormatter(colour=True).format(record("x"))


def test_text_format_indents_a_traceback_under_its_event():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("trawl", logging.ERROR, __file__, 1, "failed", None,
                                __import__("sys").exc_info())
    lines = TextFormatter().format(rec).splitlines()
    assert TEXT_LINE.match(lines[0]) and lines[0].endswith("trawl: failed")
    assert all(line.startswith("    ") for line in lines[1:])
    assert lines[-1].strip() == "ValueError: boom"


def test_json_format_is_one_object_per_line():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("trawl.sink", logging.ERROR, __file__, 1, "sink %s: %s",
                                ("out", 'say "hi"\nbye'), __import__("sys").exc_info())
    rec.sink = "out"
    rec.points = 12
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    event = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event.pop("time"))
    exception = event.pop("exception")
    assert exception.startswith("Traceback") and exception.endswith("ValueError: boom")
    assert event == {"level": "error", "logger": "trawl.sink",
                     "message": 'sink out: say "hi"\nbye', "sink": "out", "points": 12}


def test_setup_levels_and_formats_and_restore():
    root = logging.getLogger()
    before = root.handlers[:], root.level, logging.getLogger("httpx").level
    stream = io.StringIO()
    logs = setup("warning", "json", stream)
    try:
        assert root.handlers == [logs.handler]
        logging.getLogger("trawl.test").info("not shown")
        logging.getLogger("trawl.test").warning("shown %d", 1, extra={"target": "t"})
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == \
            ["shown 1"]
        assert not logs.interactive  # not a terminal
    finally:
        logs.restore()
    assert (root.handlers[:], root.level, logging.getLogger("httpx").level) == before
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        setup("info", "xml", stream)
    assert root.handlers[:] == before[0]


# ------------------------------------------------------------------ secrets, in process

SECRETS_CONFIG = """
[http]
  auth-enabled = true
  username = "admin"
  password = "http-pass-1111"
  bearer-token = "http-token-2222"

[[static-discovery]]
  id = "s"
  targets = ["127.0.0.1:1"]

[[consul]]
  id = "c"
  address = "127.0.0.1:1"
  token = "consul-token-3333"
  username = "carol"
  password = "consul-pass-4444"

[[marathon]]
  id = "m"
  servers = ["http://127.0.0.1:1"]
  basic-auth-username = "dave"
  basic-auth-password = "marathon-pass-5555"

[[scraper]]
  name = "basic"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "s"
  username = "alice"
  password = "scrape-pass-6666"

[[scraper]]
  name = "bearer"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "s"
  bearer-token = "scrape-token-7777"

[[influxdb]]
  name = "v1"
  default = true
  retry-initial-interval = "100ms"
  retry-max-interval = "200ms"
  urls = ["http://127.0.0.1:1"]
  username = "bob"
  password = "influx-pass-8888"

[[influxdb]]
  name = "v2"
  default = true
  retry-initial-interval = "100ms"
  retry-max-interval = "200ms"
  api = "v2"
  urls = ["http://127.0.0.1:1"]
  org = "o"
  bucket = "b"
  token = "influx-token-9999"
"""


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_config_secrets_finds_every_secret_field(tmp_path: Path):
    import tomllib

    token_file = tmp_path / "token"
    token_file.write_text("file-token-0000\n")
    text = SECRETS_CONFIG.replace('  bearer-token = "scrape-token-7777"\n',
                                  '  bearer-token = "scrape-token-7777"\n'
                                  '[[scraper]]\n  name = "from-file"\n  db = "prom"\n'
                                  '  rp = "autogen"\n  discoverer-service = "static-discovery"\n'
                                  f'  discoverer-id = "s"\n  bearer-token-file = "{token_file}"\n')
    config = parse_config(tomllib.loads(text), make_registry(), "secrets.toml")
    found = set(config_secrets(config))
    plain = {"http-pass-1111", "http-token-2222", "consul-token-3333", "consul-pass-4444",
             "marathon-pass-5555", "scrape-pass-6666", "scrape-token-7777",
             "influx-pass-8888", "influx-token-9999", "file-token-0000"}
    pairs = {b64("admin", "http-pass-1111"), b64("carol", "consul-pass-4444"),
             b64("dave", "marathon-pass-5555"), b64("alice", "scrape-pass-6666"),
             b64("bob", "influx-pass-8888")}
    assert found == plain | pairs


def test_masker_masks_messages_extras_tracebacks_and_encoded_forms():
    masker = SecretMasker(["s3cr/et!", b64("alice", "s3cr/et!"), 'q"uo\\te'])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(masker)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("trawl.masktest")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("password is %s", "s3cr/et!", extra={"url": "http://x/?p=s3cr%2Fet%21",
                                                       "headers": {"a": "s3cr/et!"}})
        log.warning("header Basic %s", b64("alice", "s3cr/et!"))
        log.warning("body %s", json.dumps({"password": 'q"uo\\te'}), extra={
            "parsed": {"password": 'q"uo\\te'}})
        log.warning("bad format %d", "s3cr/et!")
        try:
            raise RuntimeError("failed with s3cr/et!")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "s3cr" not in out and b64("alice", "s3cr/et!") not in out
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["message"] == f"password is {MASK}"
    assert events[0]["url"] == f"http://x/?p={MASK}"
    assert events[0]["headers"] == json.dumps({"a": MASK})
    assert events[1]["message"] == f"header Basic {MASK}"
    assert events[2]["message"] == 'body {"password": "********"}'
    assert events[2]["parsed"] == '{"password": "********"}'
    assert events[3]["message"] == "bad format %d (with arguments ('********',))"
    assert "uo" not in out
    assert events[4]["exception"].endswith(f"RuntimeError: failed with {MASK}")


# ------------------------------------------------------------------ a real trawl run

@pytest.mark.slow
def test_run_at_debug_level_logs_json_with_no_secret_and_failures_once(tmp_path: Path):
    """Every component that holds a secret talks to a server that refuses it with a 401
    echoing the credentials; one target goes down for several scrapes and comes back."""
    denied = TargetServer(401)
    flapping = TargetServer(200, "# TYPE flaps gauge\nflaps 1\n")
    port = free_port()
    config = SECRETS_CONFIG.replace("127.0.0.1:1", denied.address)
    config = config.replace('targets = ["127.0.0.1:1"]', f'targets = ["{denied.address}"]')
    config = config.replace("[http]\n", f'[http]\n  bind-address = "127.0.0.1:{port}"\n')
    config = config.replace("[[scraper]]", '[[scraper]]\n  scrape-interval = "1s"\n'
                            '  scrape-timeout = "1s"')
    config = config.replace('id = "m"', 'id = "m"\n  refresh-interval = "1s"')
    config += f"""
[[static-discovery]]
  id = "flapping"
  targets = ["{flapping.address}"]

[[scraper]]
  name = "flapping"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "flapping"
  scrape-interval = "500ms"
  scrape-timeout = "500ms"
"""
    trawl = TrawlProcess(tmp_path, config, http_port=None,
                         args=("--log-level", "debug", "--log-format", "json"))
    flapping_url = f"http://{flapping.address}/metrics"
    try:
        with trawl:
            scrapes = lambda: len(flapping.authorizations)  # noqa: E731
            wait_until(lambda: scrapes() >= 2, 15, "the flapping target to be scraped")
            flapping.status = 500
            start = scrapes()
            wait_until(lambda: scrapes() >= start + 4, 15, "four failed scrapes")
            flapping.status = 200
            start = scrapes()
            wait_until(lambda: scrapes() >= start + 2, 15, "two good scrapes")
            # The credentials were really sent to a server (which echoed them back). (The
            # InfluxDB v2 sink never sends its token: its /ping is refused first.)
            expected = {"Bearer scrape-token-7777", "X-Consul-Token consul-token-3333",
                        f"Basic {b64('alice', 'scrape-pass-6666')}",
                        f"Basic {b64('carol', 'consul-pass-4444')}",
                        f"Basic {b64('dave', 'marathon-pass-5555')}",
                        f"Basic {b64('bob', 'influx-pass-8888')}"}
            wait_until(lambda: expected <= set(denied.authorizations), 15,
                       f"every credential sent (so far {set(denied.authorizations)})")
            sent = set(denied.authorizations)
    finally:
        denied.close()
        flapping.close()
    assert trawl.proc is not None and trawl.proc.returncode == 0
    out = trawl.log()
    lines = out.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    assert {e["level"] for e in events} >= {"debug", "info", "warning"}
    assert any(e["logger"] == "httpx" for e in events)  # every request, at debug level

    secrets = [s for s in re.findall(r'(?:password|token) = "([^"]+)"', config)]
    assert len(secrets) == 9
    for s in secrets:
        assert s not in out, f"secret {s!r} appears in the logs"
    for header in sent:
        if header:
            assert header.split()[1] not in out, f"credential {header!r} appears in the logs"
    # The echoed credentials reached a log message, where the masker caught them.
    assert MASK in out

    down = [e for e in events if e["message"].startswith(f"target {flapping_url} is down")]
    back = [e for e in events if e["message"] == f"target {flapping_url} is up again"]
    assert len(down) == 1 and "HTTP status 500" in down[0]["message"]
    assert len(back) == 1 and events.index(down[0]) < events.index(back[0])
    denied_down = [e for e in events if e["logger"] == "trawl.scrape"
                   and e["message"].startswith(f"target http://{denied.address}/metrics")]
    assert len(denied_down) == 2  # one per scraper, though they fail every second
    assert all("401" in e["message"] for e in denied_down)


@pytest.mark.slow
def test_secrets_of_a_reloaded_configuration_are_masked_too(tmp_path: Path):
    """A discoverer added by a reload (SIGHUP) talks to a server that echoes its token into
    the error the discoverer logs: the new token is masked."""
    denied = TargetServer(401)
    flapping = TargetServer(200)
    port = free_port()
    base = f"""
[http]
  bind-address = "127.0.0.1:{port}"

[[static-discovery]]
  id = "s"
  targets = ["{flapping.address}"]

[[scraper]]
  name = "node"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "s"
  scrape-interval = "1s"
  scrape-timeout = "1s"

[[file-sink]]
  name = "out"
  default = true
  path = "{tmp_path / 'out.lp'}"
"""
    trawl = TrawlProcess(tmp_path, base, args=("--log-format", "json"), http_port=port)
    try:
        with trawl:  # ready: its SIGHUP handler is installed
            trawl.config_path.write_text(base + f"""
[[consul]]
  id = "c"
  address = "{denied.address}"
  token = "reloaded-token-4242"
""")
            assert trawl.proc is not None
            trawl.proc.send_signal(__import__("signal").SIGHUP)
            wait_until(lambda: "X-Consul-Token reloaded-token-4242" in denied.authorizations,
                       15, "the reloaded discoverer to send its token")
            wait_until(lambda: "discoverer consul/c failed" in trawl.log(), 15,
                       "the discoverer's failure to be logged")
    finally:
        denied.close()
        flapping.close()
    out = trawl.log()
    assert "reloaded-token-4242" not in out
    failed = [json.loads(line) for line in out.splitlines() if "consul/c failed" in line]
    assert f"X-Consul-Token: {MASK}" in failed[0]["message"]


def test_log_options_after_the_command_and_config_errors_as_json(tmp_path: Path):
    import subprocess
    import sys

    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [sys.executable, "-m", "trawl", "run", "--log-format", "json", "--log-level", "debug",
         "-c", str(missing)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    (event,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["level"] == "error" and event["logger"] == "trawl"
    assert event["message"] == f"{missing}: cannot read: No such file or directory"
    text = subprocess.run([sys.executable, "-m", "trawl", "run", "-c", str(missing)],
                          capture_output=True, text=True, timeout=30)
    assert text.returncode == 1
    assert text.stderr == f"error: {missing}: cannot read: No such file or directory\n"


def test_main_in_process_leaves_the_callers_logging_as_it_was(capsys):
    from trawl._cli import main

    root = logging.getLogger()
    before = root.handlers[:], root.level, logging.getLogger("httpx").level
    assert main(["--log-level", "debug", "--log-format", "json", "plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)  # the plugin list
    assert (root.handlers[:], root.level, logging.getLogger("httpx").level) == before
