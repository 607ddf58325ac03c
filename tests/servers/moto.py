"""moto's EC2 (and STS) server on a free loopback port (TESTENV section 5).

moto hands out private 10.x and public 54.x addresses. Nothing may ever connect to them:
tests only discover, or relabel ``__address__`` to loopback before any scrape.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from . import ServerProcess, free_port, wait_http

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
LINUX_AMI = "ami-1e749f67"  # Linux, x86_64
WINDOWS_AMI = "ami-03cf127a"  # Platform: windows


class MotoServer:
    """``python -m moto.server`` from this interpreter's environment, on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: ServerProcess | None = None

    def start(self) -> MotoServer:
        self.process = ServerProcess("moto", [
            sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port),
        ], self.workdir).start()
        try:
            wait_http(f"{self.url}/moto-api/", timeout=30)
        except TimeoutError:
            raise TimeoutError(f"moto did not start:\n{self.process.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def reset(self) -> None:
        """Forget every instance, VPC, tag ... (all regions)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def client(self, service: str = "ec2", region: str = "us-east-1") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=region,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
