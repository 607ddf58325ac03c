"""VictoriaMetrics 1.79.5 from Debian on loopback (``../shared/TESTENV.md`` section 2).

It implements InfluxDB's ``/api/v2/write``: a point ``m,tag=v value=1`` becomes the series
``m_value{tag="v"}`` (bucket and org are ignored).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

from . import ServerProcess, free_port, require_binary, wait_http
from .influxdb import Samples


class VictoriaMetrics:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ServerProcess | None = None

    def start(self) -> VictoriaMetrics:
        binary = require_binary("victoria-metrics")
        self.process = ServerProcess("victoria-metrics", [
            binary, f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y",
            "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN",
        ], self.workdir).start()
        try:
            wait_http(self.url + "/health", timeout=30)
        except TimeoutError:
            raise TimeoutError(
                f"victoria-metrics did not start:\n{self.process.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> VictoriaMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def force_flush(self) -> None:
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=10):
            pass

    def samples(self, match: str = '{__name__!=""}') -> Samples:
        """Every stored sample, by series: ``(metric name, sorted labels)``."""
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            text = resp.read().decode()
        out: Samples = defaultdict(dict)
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            labels = dict(row["metric"])
            name = labels.pop("__name__")
            key = (name, tuple(sorted(labels.items())))
            for ts, value in zip(row["timestamps"], row["values"], strict=True):
                out[key][int(ts)] = float(value)
        return dict(out)
