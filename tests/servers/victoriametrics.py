"""VictoriaMetrics 1.79.5 from Debian on loopback (``../shared/TESTENV.md`` section 2).

It implements InfluxDB's ``/api/v2/write``: a point ``m,tag=v value=1`` becomes the series
``m_value{tag="v"}`` (bucket and org are ignored).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

from . import ServerProcess, free_port, require_binary, wait_until
from .influxdb import Samples


class VictoriaMetrics:
    def __init__(self, workdir: Path, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (CA, certificate, key) PEM files to serve HTTPS with."""
        self.workdir = workdir
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.process: ServerProcess | None = None

    def start(self) -> VictoriaMetrics:
        binary = require_binary("victoria-metrics")
        self.process = ServerProcess("victoria-metrics", [
            binary, f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}", "-retentionPeriod=100y",
            "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN",
            *([ "-tls", f"-tlsCertFile={self.tls[1]}", f"-tlsKeyFile={self.tls[2]}"]
              if self.tls else []),
        ], self.workdir).start()
        try:
            wait_until(lambda: self._get("/health") == b"OK", 30, "victoria-metrics")
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

    def _get(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        with urllib.request.urlopen(self.url + path, timeout=30, context=context) as resp:
            return bytes(resp.read())

    def force_flush(self) -> None:
        self._get("/internal/force_flush")

    def samples(self, match: str = '{__name__!=""}') -> Samples:
        """Every stored sample, by series: ``(metric name, sorted labels)``."""
        query = urllib.parse.urlencode({"match[]": match})
        text = self._get(f"/api/v1/export?{query}").decode()
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
