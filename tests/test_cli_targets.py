"""``trawl targets`` against a running instance (with basic auth and bearer tokens), and
``trawl run``'s live status line on a terminal (a real pseudo-terminal) versus plain logs
when standard error is a file."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator

import pytest
from trawl.testing import ExpositionServer

from tests.servers import free_port, wait_until
from tests.servers.trawl_process import TrawlProcess, closed_port, scrape_config

pytestmark = pytest.mark.slow

EXPOSITION = "# TYPE a gauge\na 1\n# TYPE b gauge\nb 2\n"
AUTH = """
[http]
  auth-enabled = true
  username = "ops"
  password = "pa55-word"
  bearer-token = "t0ken-xyz"
"""
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: \S")


def trawl_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRAWL_")}
    return subprocess.run([sys.executable, "-m", "trawl", *args], capture_output=True,
                          text=True, timeout=30, env={**clean, **(env or {})},
                          stdin=subprocess.DEVNULL)


def with_auth(config: str, port: int) -> str:
    """``config`` with its ``[http]`` section replaced by one that requires credentials."""
    http = f'[http]\n  bind-address = "127.0.0.1:{port}"\n'
    return config.replace(http, AUTH.replace("[http]\n", http))


@pytest.fixture(scope="module")
def instance(tmp_path_factory) -> Iterator[tuple[TrawlProcess, str, str]]:
    """A trawl (standard error in a file) with auth, one up and one down target."""
    workdir = tmp_path_factory.mktemp("cli_targets")
    port = free_port()
    with ExpositionServer(EXPOSITION) as up:
        down = f"127.0.0.1:{closed_port()}"
        config = with_auth(scrape_config(port, [up.address, down], workdir / "out.jsonl"), port)
        with TrawlProcess(workdir, config) as trawl:
            trawl.http_port = port
            up_url, down_url = f"http://{up.address}/metrics", f"http://{down}/metrics"

            def both_scraped() -> bool:
                result = trawl_cli("targets", "--url", trawl.url, env={
                    "TRAWL_BEARER_TOKEN": "t0ken-xyz"})
                return result.returncode == 0 and " up " in result.stdout \
                    and " down " in result.stdout

            wait_until(both_scraped, 20, "both targets scraped")
            yield trawl, up_url, down_url


COLUMNS = ["SCRAPE POOL", "HEALTH", "SCRAPE URL", "LAST SCRAPE", "LAST ERROR"]


def parse_table(text: str) -> list[list[str]]:
    """Rows of ``trawl targets``'s table, cut where the header's columns start."""
    lines = text.splitlines()
    starts = [lines[0].index(name) for name in COLUMNS]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            for line in lines]


def test_targets_prints_a_table_with_basic_auth(instance, tmp_path):
    trawl, up_url, down_url = instance
    password = tmp_path / "password"
    password.write_text("pa55-word\n")
    result = trawl_cli("targets", "--url", trawl.url, "--username", "ops",
                       "--password-file", str(password))
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout)
    assert rows[0] == COLUMNS
    by_url = {r[2]: r for r in rows[1:]}
    assert set(by_url) == {up_url, down_url}
    assert by_url[up_url][:2] == ["node", "up"] and by_url[up_url][4] == ""
    assert by_url[down_url][:2] == ["node", "down"]
    assert "Connection refused" in by_url[down_url][4]
    for row in rows[1:]:
        assert re.fullmatch(r"\d+s ago \(\d+ms\)", row[3]), row


def test_targets_with_a_bearer_token_file_or_environment(instance, tmp_path):
    trawl, up_url, down_url = instance
    token = tmp_path / "token"
    token.write_text("t0ken-xyz")
    by_file = trawl_cli("targets", "--url", trawl.url, "--bearer-token-file", str(token))
    by_env = trawl_cli("targets", env={"TRAWL_URL": trawl.url, "TRAWL_BEARER_TOKEN": "t0ken-xyz"})
    for result in (by_file, by_env):
        assert result.returncode == 0, result.stderr
        assert up_url in result.stdout and down_url in result.stdout
    only = trawl_cli("targets", "--url", trawl.url, "--bearer-token-file", str(token),
                     "--scrape-pool", "other")
    assert only.returncode == 0 and only.stdout.splitlines()[1:] == []


def test_targets_without_credentials_says_so(instance, tmp_path):
    trawl = instance[0]
    result = trawl_cli("targets", "--url", trawl.url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"error: {trawl.url} asks for credentials: use --username and "
                             "--password-file, or --bearer-token-file\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    result = trawl_cli("targets", "--url", trawl.url, "--username", "ops",
                       "--password-file", str(wrong))
    assert result.returncode == 1 and "asks for credentials" in result.stderr
    missing = trawl_cli("targets", "--url", trawl.url, "--password-file", str(tmp_path / "x"),
                        "--username", "ops")
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: cannot read {tmp_path / 'x'}: ")


def test_targets_when_the_instance_cannot_be_reached():
    url = f"http://127.0.0.1:{closed_port()}"
    result = trawl_cli("targets", "--url", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach trawl at {url}: ")
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_without_a_terminal_writes_plain_log_lines(instance):
    trawl, _, down_url = instance
    log = trawl.log()
    assert "\x1b" not in log and "\r" not in log and "samples/s" not in log
    lines = log.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), log
    assert sum(f"target {down_url} is down" in line for line in lines) == 1


def run_on_a_terminal(tmp_path, args: tuple[str, ...], done: Callable[[str], bool]
                      ) -> tuple[int, str, str]:
    """Run trawl (one up and one down target) with standard error on a pseudo-terminal
    160 columns wide until ``done(screen)``, then SIGINT it.

    Returns:
      The exit code, everything written to the terminal, and the down target's address.
    """
    port = free_port()
    with ExpositionServer(EXPOSITION) as up:
        down = f"127.0.0.1:{closed_port()}"
        config = tmp_path / "trawl.toml"
        config.write_text(scrape_config(port, [up.address, down], tmp_path / "out.jsonl"))
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))
        proc = subprocess.Popen([sys.executable, "-m", "trawl", *args, "run", "-c", str(config)],
                                cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        screen = b""
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if select.select([master], [], [], 0.2)[0]:
                    screen += os.read(master, 65536)
                if done(screen.decode(errors="replace")):
                    break
            proc.send_signal(signal.SIGINT)
            end = time.monotonic() + 15
            while time.monotonic() < end:
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # the terminal's other end is closed: trawl is gone
                        break
                    screen += chunk
                elif proc.poll() is not None:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            os.close(master)
    return proc.returncode, screen.decode(errors="replace"), down


def test_run_on_a_terminal_shows_a_live_status_line(tmp_path):
    status = re.compile(r"targets 1 up, 1 down · [1-9][\d,]* samples/s")
    code, text, down = run_on_a_terminal(
        tmp_path, (), lambda screen: bool(status.search(screen)) and "is down" in screen)
    assert code == 0
    # The status line is drawn in place (carriage return, erase line) ...
    statuses = re.findall(r"\r\x1b\[K(trawl · [^\r\n]*)", text)
    assert any(re.fullmatch(r"trawl · targets 1 up, 1 down · [1-9][\d,]* samples/s · "
                            r"sink out: queue \d[\d,]*, spool 0 B", s) for s in statuses), statuses
    # ... log lines are written above it, each on its own line, and the level is coloured ...
    events = [line.split("\r\x1b[K")[-1] for line in text.split("\n")]
    down_lines = [e for e in events if f"target http://{down}/metrics is down" in e]
    assert len(down_lines) == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \x1b\[33mWARNING\x1b\[0m trawl.scrape: ",
                    down_lines[0])
    # ... and it is erased on the way out: the last thing written is the "stopped" line.
    assert text.rstrip("\r\n").endswith("trawl: stopped")


def test_run_on_a_terminal_with_json_logs_has_no_status_line(tmp_path):
    # (A status line would be drawn at once, before the first scrape.)
    code, text, down = run_on_a_terminal(
        tmp_path, ("--log-format", "json"), lambda screen: "is down" in screen)
    assert code == 0
    assert "\x1b" not in text and "samples/s" not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e["message"] == f"target http://{down}/metrics is down: connection failed: "
               f"[Errno 111] Error connecting to ('127.0.0.1', {down.split(':')[1]}): "
               "Connection refused" for e in events), events
    assert events[-1]["message"] == "stopped"


def test_targets_over_https_with_a_ca_file(tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    with ExpositionServer(EXPOSITION) as up:
        config = with_auth(scrape_config(port, [up.address], tmp_path / "out.jsonl"), port)
        config = config.replace("[http]\n", f'[http]\n  https-enabled = true\n'
                                f'  https-certificate = "{cert_file}"\n'
                                f'  https-private-key = "{key_file}"\n')
        with TrawlProcess(tmp_path, config):
            url = f"https://127.0.0.1:{port}"
            env = {"TRAWL_USERNAME": "ops", "TRAWL_PASSWORD": "pa55-word"}
            wait_until(lambda: trawl_cli("targets", "--url", url, "--ca-file", str(ca_file),
                                         env=env).returncode == 0, 20, "trawl over HTTPS")
            ok = trawl_cli("targets", "--url", url, "--ca-file", str(ca_file), env=env)
            unverified = trawl_cli("targets", "--url", url, env=env)
    assert f"http://{up.address}/metrics" in ok.stdout
    assert unverified.returncode == 1
    assert unverified.stderr.startswith(f"error: cannot reach trawl at {url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in unverified.stderr


def test_status_text_fits_the_terminal(tmp_path):
    import tomllib

    from trawl._config import parse_config
    from trawl._host import Host
    from trawl._status import human_bytes, status_text
    from trawl.testing import make_registry

    registry = make_registry()
    text = scrape_config(free_port(), ["127.0.0.1:1"], tmp_path / "out.jsonl")
    host = Host(parse_config(tomllib.loads(text), registry), registry)
    line = status_text(host, 1234.4)
    assert line == ("trawl · targets 0 up, 0 down · 1,234 samples/s · "
                    "sink out: queue 0, spool 0 B · starting")
    short = status_text(host, 1234.4, width=30)
    assert short == "trawl · targets 0 up, 0 down…" and len(short) == 29
    assert [human_bytes(n) for n in (0, 1023, 1536, 20 << 20, 3 << 40)] == \
        ["0 B", "1023 B", "1.5 KiB", "20 MiB", "3072 GiB"]
