"""dnsmasq from Debian as a real DNS authority on a free loopback port (TESTENV section 4).

Records live in dnsmasq's configuration; SRV records can only change with a restart,
so `Dnsmasq.set_records` rewrites the configuration and restarts on the same port
(about 0.1 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from . import ServerProcess, free_udp_tcp_port, require_binary, wait_until

DOMAIN = "test.internal"


class Dnsmasq:
    """dnsmasq answering for ``test.internal`` only, on 127.0.0.1 and a free port.

    Args:
      workdir: Where the configuration and log go.
      hosts: ``(name, [address, ...])`` pairs, served as A/AAAA records (``host-record``).
      srv: ``(name, target, port)`` triples, served as SRV records (``srv-host``).
      mx: ``(name, exchange, preference)`` triples, served as MX records (``mx-host``).

    Names outside ``local_domain`` (default ``test.internal``) are answered REFUSED.
    """

    def __init__(self, workdir: Path, hosts: Iterable[tuple[str, list[str]]] = (),
                 srv: Iterable[tuple[str, str, int]] = (),
                 mx: Iterable[tuple[str, str, int]] = ()) -> None:
        self.workdir = workdir
        self.port = free_udp_tcp_port()
        self.nameserver = f"127.0.0.1:{self.port}"
        self.hosts = list(hosts)
        self.srv = list(srv)
        self.mx = list(mx)
        self.local_domain = DOMAIN
        self.config_path = workdir / "dnsmasq.conf"
        self.process: ServerProcess | None = None

    def _write_config(self) -> None:
        lines = [
            f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces",
            "no-resolv", "no-hosts", "no-poll", "no-negcache", "local-ttl=0",
            f"local=/{self.local_domain}/",
        ]
        lines += [f"host-record={name},{','.join(addrs)}" for name, addrs in self.hosts]
        lines += [f"srv-host={name},{target},{port},0,10" for name, target, port in self.srv]
        lines += [f"mx-host={name},{exchange},{pref}" for name, exchange, pref in self.mx]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Dnsmasq:
        binary = require_binary("dnsmasq")
        self._write_config()
        self.process = ServerProcess("dnsmasq", [
            binary, "--keep-in-foreground", "--user=root", f"--conf-file={self.config_path}",
            "--pid-file=", "--log-facility=-",
        ], self.workdir).start()
        try:
            wait_until(self._answers, 10, "dnsmasq to answer")
        except TimeoutError:
            raise TimeoutError(f"dnsmasq did not start:\n{self.process.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        r.lifetime = 0.5
        try:
            r.resolve(f"probe.{self.local_domain}", dns.rdatatype.A)
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def set_records(self, hosts: Iterable[tuple[str, list[str]]] | None = None,
                    srv: Iterable[tuple[str, str, int]] | None = None) -> None:
        """Replace the records (those given) and restart dnsmasq on the same port."""
        if hosts is not None:
            self.hosts = list(hosts)
        if srv is not None:
            self.srv = list(srv)
        self.stop()
        self.start()

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
