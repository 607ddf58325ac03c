"""Prometheus 2.42 and vmagent 1.79 from Debian, as reference implementations.

Used as discovery oracles: every job gets a relabel rule that drops every target (unless
``drop_all=False``), so nothing is scraped and the discovered labels appear under
``droppedTargets`` in ``/api/v1/targets``.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import ServerProcess, free_port, require_binary, wait_http, wait_until

DROP_ALL = {"source_labels": ["__address__"], "regex": ".*", "action": "drop"}
IGNORED_LABELS = frozenset(("job", "__scheme__", "__metrics_path__", "__scrape_interval__",
                            "__scrape_timeout__"))


class _Reference:
    binary = ""
    name = ""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], *,
                 drop_all: bool = True, scrape_interval: str = "1s",
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = []
        for job in scrape_configs:
            job = dict(job)
            if drop_all:
                job["relabel_configs"] = [*job.get("relabel_configs", []), DROP_ALL]
            jobs.append(job)
        self.config_path = workdir / f"{self.name}.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
            "scrape_configs": jobs,
        }))
        self.process: ServerProcess | None = None

    def argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Reference:
        binary = require_binary(self.binary)
        self.process = ServerProcess(self.name, self.argv(binary), self.workdir,
                                     env=self.env).start()
        try:
            wait_http(self.ready_url, timeout=30)
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not start:\n{self.process.log_tail()}") from None
        return self

    @property
    def ready_url(self) -> str:
        return f"{self.url}/-/ready"

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> _Reference:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def targets(self, state: str = "any") -> dict[str, Any]:
        query = urllib.parse.urlencode({"state": state})
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?{query}", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)["data"]
            return data

    def discovered(self, job: str | None = None) -> list[dict[str, str]]:
        """The discovered labels of every target (active and dropped) of ``job``."""
        data = self.targets()
        out = []
        for t in [*data.get("activeTargets", []), *data.get("droppedTargets", [])]:
            labels = t.get("discoveredLabels", {})
            if job is None or labels.get("job") == job or t.get("scrapePool") == job:
                out.append(labels)
        return out

    def wait_discovered(self, job: str | None, count: int, timeout: float = 40.0
                        ) -> list[dict[str, str]]:
        """Wait until ``job`` has exactly ``count`` discovered targets; return their labels."""
        wait_until(lambda: len(self.discovered(job)) == count, timeout,
                   f"{self.name} to discover {count} targets for {job}")
        return self.discovered(job)


class Prometheus(_Reference):
    """Prometheus 2.42 (``/usr/bin/prometheus``). It applies discovery about every 5 s."""

    binary = "prometheus"
    name = "prometheus"

    def argv(self, binary: str) -> list[str]:
        return [binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                "--log.level=warn"]


class VMAgent(_Reference):
    """vmagent 1.79 (``/usr/bin/vmagent``): the reference for Consul and Kubernetes SD.

    vmagent keeps dropped targets in ``/api/v1/targets`` for minutes after they vanish:
    compare after a change with a fresh instance.
    """

    binary = "vmagent"
    name = "vmagent"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/health"

    def argv(self, binary: str) -> list[str]:
        # vmagent needs somewhere to push to; nothing is scraped, so nothing is pushed.
        return [binary, f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-promscrape.config={self.config_path}",
                "-promscrape.fileSDCheckInterval=1s", "-promscrape.configCheckInterval=1s",
                f"-remoteWrite.url=http://127.0.0.1:{free_port()}/api/v1/write",
                f"-remoteWrite.tmpDataPath={self.workdir / 'vmagent-rw'}",
                "-promscrape.dropOriginalLabels=false", "-promscrape.maxDroppedTargets=100000",
                "-loggerLevel=WARN"]


def comparable(labels: dict[str, str]) -> dict[str, str]:
    """Discovered labels without those the scrape config adds (job, scheme, path ...)."""
    return {k: v for k, v in labels.items()
            if k not in IGNORED_LABELS and not k.startswith(("__scrape_", "__vm_"))}
