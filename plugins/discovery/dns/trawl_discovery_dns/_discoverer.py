from __future__ import annotations

import ipaddress
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import trawl
import trio
from pydantic import Field, field_validator, model_validator

NAME_LABEL = "__meta_dns_name"
SRV_TARGET_LABEL = "__meta_dns_srv_record_target"
SRV_PORT_LABEL = "__meta_dns_srv_record_port"
MX_TARGET_LABEL = "__meta_dns_mx_record_target"
PER_TRY_TIMEOUT = 2.0  # one query to one server, as Go's dns.Client (Prometheus)


class DNSConfig(trawl.DiscovererConfig):
    """``[[dns]]``: Kapacitor's keys plus ``nameservers`` and ``timeout``."""

    record_names: list[str] = Field(default_factory=list)
    type: Literal["SRV", "A", "AAAA", "MX"] = "SRV"
    port: int = Field(80, ge=0, le=65535)
    refresh_interval: trawl.Duration = 30.0
    nameservers: list[str] = Field(default_factory=list)
    timeout: trawl.Duration = 5.0

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            parse_nameserver(server)
        return servers

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _complete(self) -> DNSConfig:
        if self.enabled and not self.record_names:
            raise ValueError("record-names: give at least one DNS name to resolve")
        if self.type != "SRV" and self.port == 0:
            raise ValueError("port: a port is required for A, AAAA and MX records")
        return self


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"10.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` → (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected [address]:port")
        if rest:
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(text, rest)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"nameserver {text!r}: {value!r} is not a port")
    return int(value)


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: brackets around IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DNSDiscoverer(trawl.RefreshDiscoverer):
    """Resolves every record name each ``refresh-interval``, as Prometheus 2.42's ``dns_sd``.

    Each name is its own group (source = the name). A name that does not exist
    (NXDOMAIN) or has no records of the type gives an empty group; any other failure
    keeps that name's last good targets and is reported in the discoverer's health.
    """

    kind = "dns"
    Config = DNSConfig
    config: DNSConfig

    def __init__(self, config: DNSConfig) -> None:
        super().__init__(config)
        self._good: dict[str, trawl.TargetGroup] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        if self.config.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(s))
                for s in self.config.nameservers
            ]
        else:
            resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf, as Prometheus
        resolver.lifetime = self.config.timeout
        resolver.timeout = min(PER_TRY_TIMEOUT, self.config.timeout)
        resolver.cache = None
        return resolver

    async def refresh(self) -> list[trawl.TargetGroup]:
        if self._resolver is None or not self.config.nameservers:
            # /etc/resolv.conf is read again on every refresh, as Prometheus does; it is
            # file I/O, so not on the Trio thread.
            self._resolver = await trio.to_thread.run_sync(self._make_resolver)
        errors: dict[str, str] = {}

        async def one(name: str) -> None:
            try:
                self._good[name] = await self.lookup(name)
            except LookupFailed as exc:
                errors[name] = str(exc)

        async with trio.open_nursery() as nursery:
            for name in dict.fromkeys(self.config.record_names):
                nursery.start_soon(one, name)
        groups = [self._good[n] for n in dict.fromkeys(self.config.record_names)
                  if n in self._good]
        if len(errors) == len(set(self.config.record_names)):
            raise LookupFailed("; ".join(errors.values()))
        if errors:
            raise trawl.PartialRefresh("; ".join(errors.values()), groups)
        return groups

    async def lookup(self, name: str) -> trawl.TargetGroup:
        """The group for one record name; raise `LookupFailed` when it cannot be known."""
        assert self._resolver is not None
        rdtype = dns.rdatatype.from_text(self.config.type)
        try:
            with trio.fail_after(self.config.timeout + 1):
                answer = await self._resolver.resolve(
                    name, rdtype, search=not self.config.nameservers)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return trawl.group(name, [])
        except trio.TooSlowError:
            raise LookupFailed(f"could not resolve {name!r}: timed out") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"could not resolve {name!r}: {exc}") from None
        targets: list[dict[str, str]] = []
        for rdata in answer:
            # Every target carries every label, empty where it does not apply (Prometheus).
            labels = {NAME_LABEL: name, SRV_TARGET_LABEL: "", SRV_PORT_LABEL: "",
                      MX_TARGET_LABEL: ""}
            if rdtype == dns.rdatatype.SRV:
                srv_target = rdata.target.to_text()
                address = join_host_port(srv_target.rstrip("."), rdata.port)
                labels[SRV_TARGET_LABEL] = srv_target
                labels[SRV_PORT_LABEL] = str(rdata.port)
            elif rdtype == dns.rdatatype.MX:
                exchange = rdata.exchange.to_text()
                address = join_host_port(exchange.rstrip("."), self.config.port)
                labels[MX_TARGET_LABEL] = exchange
            else:
                address = join_host_port(rdata.address, self.config.port)
            targets.append({"__address__": address, **labels})
        # DNS servers may rotate the order of records; a stable order avoids resending.
        targets.sort(key=lambda t: (t["__address__"], t[SRV_TARGET_LABEL], t[MX_TARGET_LABEL]))
        return trawl.group(name, tuple(targets))


class LookupFailed(trawl.TrawlError):
    """A record name could not be resolved (timeout, SERVFAIL, REFUSED, garbage)."""
