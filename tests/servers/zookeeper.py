"""ZooKeeper 3.8 standalone (Debian's ``libzookeeper-java``) on a free loopback port.

Recipe: ``../shared/TESTENV.md`` section 3. The server keeps its port and data directory
across `ZooKeeper.restart`, so sessions and ephemeral nodes survive a restart, as they do in
production. ``tick_ms`` defaults to 500 so that the shortest session a client may ask for
is one second (ZooKeeper allows 2 to 20 ticks), which keeps session-expiry tests short.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from . import ServerProcess, free_port, require_binary, wait_until

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
SLF4J_SIMPLE_JAR = "/usr/share/java/slf4j-simple.jar"  # server log in <workdir>/zookeeper.log


def four_letter_word(host: str, port: int, word: str, timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command (``ruok``, ``srvr``, ...) and return the answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode())
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")


class ZooKeeper:
    """A standalone ZooKeeper server; a context manager, restartable on the same port."""

    def __init__(self, workdir: Path, *, tick_ms: int = 500, port: int | None = None) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tick_ms = tick_ms
        self.log_level = os.environ.get("TRAWL_TEST_ZOOKEEPER_LOG_LEVEL", "warn")
        self.data_dir = workdir / "data"
        self.config_path = workdir / "zoo.cfg"
        self.process: ServerProcess | None = None

    @property
    def hosts(self) -> str:
        """``host:port``, as kazoo and trawl's ``servers`` take it."""
        return f"{self.host}:{self.port}"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(
            f"tickTime={self.tick_ms}\n"
            f"dataDir={self.data_dir}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={self.host}\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,stat,mntr,envi\n"
            "maxClientCnxns=0\n"
        )

    def start(self) -> ZooKeeper:
        java = require_binary("java")
        require_binary(ZOOKEEPER_JAR)
        self._write_config()
        argv = [java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.jmx.log4j.disable=true",
                f"-Dorg.slf4j.simpleLogger.defaultLogLevel={self.log_level}",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp", f"{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}",
                "org.apache.zookeeper.server.ZooKeeperServerMain", str(self.config_path)]
        self.process = ServerProcess("zookeeper", argv, self.workdir).start()
        try:
            wait_until(self.ready, 30, f"ZooKeeper on {self.hosts}")
        except TimeoutError:
            self.process.stop()
            raise TimeoutError(f"ZooKeeper did not start:\n{self.process.log_tail()}") from None
        return self

    def ready(self) -> bool:
        # Not ``ruok``: it answers "imok" before the database is loaded, while client
        # connections are still being dropped. ``srvr`` reports a mode once it serves.
        try:
            return "Mode: " in four_letter_word(self.host, self.port, "srvr", 0.5)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL after 10 s); the data directory stays."""
        if self.process is not None:
            self.process.stop()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def client(self, timeout: float = 10.0, **kwargs: Any) -> Any:
        """A started `kazoo.client.KazooClient` with a session of ``timeout`` seconds."""
        from kazoo.client import KazooClient

        zk = KazooClient(hosts=self.hosts, timeout=timeout, **kwargs)
        zk.start(timeout=10)
        return zk

    def __enter__(self) -> ZooKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_OWNER_SCRIPT = """
import sys, time
from kazoo.client import KazooClient
hosts, path, data, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
zk = KazooClient(hosts=hosts, timeout=timeout)
zk.start(timeout=10)
print(zk.create(path, data.encode(), ephemeral=True, sequence=True, makepath=True), flush=True)
time.sleep(600)
"""


class EphemeralOwner:
    """A separate process owning one ephemeral sequential node, to be killed (SIGKILL).

    Killed, it cannot close its session: ZooKeeper expires the session after
    ``session_timeout`` seconds and only then deletes the node, as when a real member dies.
    """

    def __init__(self, zookeeper: ZooKeeper, path: str, data: bytes,
                 session_timeout: float = 1.0) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _OWNER_SCRIPT, zookeeper.hosts, path, data.decode(),
             str(session_timeout)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            self.kill()
            raise RuntimeError(f"the member process did not create a node under {path}")
        self.path = line

    def kill(self) -> None:
        """SIGKILL by PID: the process dies without closing its session."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
