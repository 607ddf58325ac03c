"""Loading and validating the TOML configuration (Kapacitor's section and key names)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator

from ._discovery import Discoverer
from ._errors import ConfigError
from ._model import ByteSize, DiscovererConfig, Duration, ProcessorConfig, SectionModel, SinkConfig
from ._plugins import KNOWN_SECTIONS, Registry
from ._processing import Processor
from ._relabel import RelabelConfig
from ._sinks import Sink

DEFAULT_BODY_SIZE_LIMIT = 64 * 1024 * 1024


class ScraperConfig(SectionModel):
    """One ``[[scraper]]``: every key Kapacitor's scraper has, plus trawl's own."""

    enabled: bool = True
    name: str = ""
    type: str = "prometheus"
    db: str = ""
    rp: str = ""
    scheme: Literal["http", "https"] = "http"
    metrics_path: str = "/metrics"
    params: dict[str, list[str]] = Field(default_factory=dict)
    scrape_interval: Duration = 60.0
    scrape_timeout: Duration = 10.0
    username: str = ""
    password: SecretStr = SecretStr("")
    bearer_token: SecretStr = SecretStr("")
    bearer_token_file: str = ""
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    ssl_server_name: str = ""
    insecure_skip_verify: bool = False
    proxy_url: str = ""
    discoverer_id: str = ""
    discoverer_service: str = ""
    blacklist: list[str] = Field(default_factory=list)
    # trawl's own keys
    sinks: list[str] = Field(default_factory=list)
    honor_labels: bool = False
    honor_timestamps: bool = True
    body_size_limit: ByteSize = DEFAULT_BODY_SIZE_LIMIT
    sample_limit: int = Field(default=0, ge=0)
    label_limit: int = Field(default=0, ge=0)
    label_name_length_limit: int = Field(default=0, ge=0)
    label_value_length_limit: int = Field(default=0, ge=0)
    processors: list[dict[str, Any]] = Field(default_factory=list)
    relabel_configs: list[RelabelConfig] = Field(default_factory=list)
    metric_relabel_configs: list[RelabelConfig] = Field(default_factory=list)
    format: Literal["kapacitor", "telegraf-v1", "telegraf-v2"] = "kapacitor"

    @field_validator("params", mode="before")
    @classmethod
    def _params_as_lists(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _kapacitor_rules(self) -> ScraperConfig:
        if not self.name:
            raise ValueError("scraper config must be given a name")
        if not self.db:
            raise ValueError("scraper config must be given a db")
        if not self.rp:
            raise ValueError("scraper config must be given an rp")
        if self.type != "prometheus":
            raise ValueError(f'unknown scraper type {self.type!r}: type must be "prometheus"')
        if self.scrape_interval <= 0:
            raise ValueError("scrape-interval must be above zero")
        if self.scrape_timeout <= 0:
            raise ValueError("scrape-timeout must be above zero")
        if self.scrape_timeout > self.scrape_interval:
            raise ValueError(
                f"scrape-timeout ({self.scrape_timeout:g}s) is greater than "
                f"scrape-interval ({self.scrape_interval:g}s)"
            )
        if not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics-path {self.metrics_path!r} must start with '/'")
        if self.username and self.bearer_token.get_secret_value():
            raise ValueError("username/password and bearer-token are mutually exclusive")
        if self.bearer_token.get_secret_value() and self.bearer_token_file:
            raise ValueError("bearer-token and bearer-token-file are mutually exclusive")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("ssl-cert and ssl-key must be given together")
        return self


class HttpConfig(SectionModel):
    """``[http]``: trawl's own HTTP endpoint. Kapacitor's other keys are accepted and unused."""

    enabled: bool = True
    bind_address: str = "127.0.0.1:9273"
    auth_enabled: bool = False
    username: str = ""
    password: SecretStr = SecretStr("")
    bearer_token: SecretStr = SecretStr("")
    log_enabled: bool = True
    write_tracing: bool = False
    pprof_enabled: bool = False
    https_enabled: bool = False
    https_certificate: str = ""
    https_private_key: str = ""
    shutdown_timeout: Duration = 10.0
    shared_secret: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _auth_and_tls(self) -> HttpConfig:
        if self.auth_enabled and not (self.username or self.bearer_token.get_secret_value()):
            raise ValueError("auth-enabled needs username and password, or bearer-token")
        if self.https_enabled and not self.https_certificate:
            raise ValueError("https-enabled needs https-certificate (and https-private-key)")
        return self


class ReloadConfig(SectionModel):
    """``[reload]``: also reload when the configuration file changes."""

    watch: bool = False
    interval: Duration = 2.0


@dataclass
class Config:
    """A validated configuration."""

    path: str
    scrapers: list[ScraperConfig] = field(default_factory=list)
    discoverers: list[tuple[type[Discoverer], DiscovererConfig]] = field(default_factory=list)
    sinks: list[tuple[type[Sink], SinkConfig]] = field(default_factory=list)
    processors: dict[str, list[tuple[type[Processor], ProcessorConfig]]] = field(
        default_factory=dict
    )
    http: HttpConfig | None = None
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    notices: list[str] = field(default_factory=list)

    def enabled_scrapers(self) -> list[ScraperConfig]:
        return [s for s in self.scrapers if s.enabled]

    def enabled_discoverers(self) -> list[tuple[type[Discoverer], DiscovererConfig]]:
        return [(cls, c) for cls, c in self.discoverers if c.enabled]

    def enabled_sinks(self) -> list[tuple[type[Sink], SinkConfig]]:
        return [(cls, c) for cls, c in self.sinks if c.enabled]

    def sinks_of(self, scraper: ScraperConfig) -> list[str]:
        """Names of the sinks a scraper writes to (its ``sinks``, or every default sink)."""
        if scraper.sinks:
            return list(scraper.sinks)
        return [c.name for _, c in self.enabled_sinks() if c.default]

    def summary(self) -> str:
        return (
            f"{self.path}: OK: {len(self.enabled_scrapers())} scraper(s), "
            f"{len(self.enabled_discoverers())} discoverer(s), "
            f"{len(self.enabled_sinks())} sink(s) enabled"
        )


def load_config(path: str | Path, registry: Registry) -> Config:
    """Read and validate a TOML file.

    Raises:
      ConfigError: with every problem found, each naming the file, section and key.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_config(data, registry, path)


def parse_config(data: Mapping[str, Any], registry: Registry, path: str = "<config>") -> Config:
    """Validate already-parsed TOML data; see `load_config`."""
    config = Config(path=path)
    problems: list[str] = []
    ignored: list[str] = []

    for section, value in data.items():
        if section == "scraper":
            for index, entry in _entries(section, value, path, problems):
                model = _validate(ScraperConfig, entry, path, section, index, problems)
                if model is not None:
                    config.scrapers.append(model)
                    config.processors[model.name] = _processors(
                        model, registry, _where(path, section, index, entry), problems
                    )
        elif section == "reload":
            if not isinstance(value, Mapping):
                problems.append(f"{path}: [reload]: expected a table")
                continue
            reload = _validate(ReloadConfig, value, path, section, None, problems)
            if reload is not None:
                config.reload = reload
        elif section == "http":
            if not isinstance(value, Mapping):
                problems.append(f"{path}: [http]: expected a table")
                continue
            config.http = _validate(HttpConfig, value, path, section, None, problems)
        elif section in registry.discoverers or section in registry.sinks:
            cls: Any = registry.discoverers.get(section) or registry.sinks[section]
            target: list[Any] = (
                config.discoverers if section in registry.discoverers else config.sinks
            )
            for index, entry in _entries(section, value, path, problems):
                model = _validate(cls.Config, entry, path, section, index, problems)
                if model is not None:
                    target.append((cls, model))
        elif section in KNOWN_SECTIONS:
            entries = value if isinstance(value, list) else [value]
            if any(isinstance(e, Mapping) and e.get("enabled", True) for e in entries):
                dist = KNOWN_SECTIONS[section]
                problems.append(
                    f"{path}: [[{section}]]: no installed plugin reads this section; "
                    f"install it with: pip install {dist}"
                )
            else:
                config.notices.append(
                    f"{path}: [[{section}]] is disabled and its plugin is not installed "
                    f"({KNOWN_SECTIONS[section]})"
                )
        else:
            ignored.append(section)

    if ignored:
        config.notices.append(
            f"{path}: ignoring sections trawl does not use: "
            + ", ".join(f"[{s}]" for s in ignored)
        )
    if not problems:
        _cross_check(config, path, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _entries(
    section: str, value: Any, path: str, problems: list[str]
) -> list[tuple[int | None, Mapping[str, Any]]]:
    if isinstance(value, Mapping):
        return [(None, value)]
    if isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
        return [(i, v) for i, v in enumerate(value, 1)]
    problems.append(f"{path}: [[{section}]]: expected a table or an array of tables")
    return []


def _where(path: str, section: str, index: int | None, entry: Mapping[str, Any]) -> str:
    ident = ""
    for key in ("name", "id"):
        if isinstance(entry.get(key), str) and entry[key]:
            ident = f' ({key} = "{entry[key]}")'
            break
    if index is None:
        return f"{path}: [{section}]{ident}"
    return f"{path}: [[{section}]] #{index}{ident}"


def _validate(
    model: type[BaseModel], entry: Mapping[str, Any], path: str, section: str,
    index: int | None, problems: list[str],
) -> Any:
    try:
        return model.model_validate(entry, by_alias=True, by_name=False)
    except ValidationError as exc:
        where = _where(path, section, index, entry)
        for err in exc.errors(include_url=False, include_input=False):
            problems.append(f"{where}: {_describe(err)}")
        return None


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f'unknown key "{loc}"'
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if not loc:
        return msg
    return f'key "{loc}": {msg}'


def _processors(
    scraper: ScraperConfig, registry: Registry, where: str, problems: list[str]
) -> list[tuple[type[Processor], ProcessorConfig]]:
    out = []
    for index, entry in enumerate(scraper.processors, 1):
        kind = entry.get("kind")
        cls = registry.processors.get(kind) if isinstance(kind, str) else None
        sub = f"{where}: [[scraper.processors]] #{index}"
        if cls is None:
            known = ", ".join(sorted(registry.processors)) or "none installed"
            problems.append(f'{sub}: key "kind": unknown processor {kind!r} (known: {known})')
            continue
        try:
            out.append((cls, cls.Config.model_validate(entry, by_alias=True, by_name=False)))
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                problems.append(f"{sub} (kind = \"{kind}\"): {_describe(err)}")
    return out


def _cross_check(config: Config, path: str, problems: list[str]) -> None:
    discoverers: dict[tuple[str, str], DiscovererConfig] = {}
    for cls, d in config.discoverers:
        key = (cls.kind, d.id)
        if key in discoverers:
            problems.append(f'{path}: [[{cls.kind}]]: id "{d.id}" is used twice')
        discoverers[key] = d
    sinks: dict[str, tuple[str, SinkConfig]] = {}
    for sink_cls, s in config.sinks:
        if not s.name:
            problems.append(f"{path}: [[{sink_cls.kind}]]: key \"name\" is required")
        elif s.name in sinks:
            problems.append(f'{path}: [[{sink_cls.kind}]]: name "{s.name}" is used twice')
        sinks[s.name] = (sink_cls.kind, s)
    seen: set[str] = set()
    for index, sc in enumerate(config.scrapers, 1):
        where = f'{path}: [[scraper]] #{index} (name = "{sc.name}")'
        if sc.name in seen:
            problems.append(f'{where}: name "{sc.name}" is used twice')
        seen.add(sc.name)
        if not sc.enabled:
            continue
        if not sc.discoverer_service or not sc.discoverer_id:
            problems.append(
                f'{where}: key "discoverer-service" and "discoverer-id" must name a discoverer'
            )
        else:
            discoverer = discoverers.get((sc.discoverer_service, sc.discoverer_id))
            if discoverer is None or not discoverer.enabled:
                state = "disabled" if discoverer is not None else "no"
                problems.append(
                    f'{where}: key "discoverer-id": {state} [[{sc.discoverer_service}]] '
                    f'with id "{sc.discoverer_id}"'
                    + ("" if discoverer is not None else " is configured")
                )
        for name in sc.sinks:
            found = sinks.get(name)
            if found is None:
                problems.append(f'{where}: key "sinks": no sink is named "{name}"')
            elif not found[1].enabled:
                problems.append(f'{where}: key "sinks": sink "{name}" is disabled')
        if not config.sinks_of(sc):
            problems.append(
                f'{where}: no sink to write to: list sinks in key "sinks", '
                "or mark a sink with default = true"
            )
