from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import trawl
import trio
from pydantic import SecretStr, field_validator, model_validator

log = logging.getLogger("trawl.discovery.azure")

META = "__meta_azure_"
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_TIMEOUT = 30.0
"""Seconds for one HTTP request to Azure (connect and read each)."""
_REFRESH_TIMEOUT = 300.0
"""Seconds for a whole refresh (every list and every network interface)."""
_CONCURRENCY = 8
"""Network interfaces fetched at the same time, as worker threads."""


@dataclass(frozen=True)
class Environment:
    """An Azure cloud: its Entra ID (AAD) authority and its Resource Manager endpoint."""

    authority: str
    resource_manager: str
    token_audience: str = ""


# Names as go-autorest (and so Prometheus and Kapacitor) accept them, case-insensitively.
ENVIRONMENTS = {
    "azurepubliccloud": Environment("login.microsoftonline.com",
                                    "https://management.azure.com"),
    "azurechinacloud": Environment("login.chinacloudapi.cn",
                                   "https://management.chinacloudapi.cn"),
    "azuregermancloud": Environment("login.microsoftonline.de",
                                    "https://management.microsoftazure.de"),
    "azureusgovernmentcloud": Environment("login.microsoftonline.us",
                                          "https://management.usgovcloudapi.net"),
}


STACK = "azurestackcloud"
STACK_FILE_VARIABLE = "AZURE_ENVIRONMENT_FILEPATH"


def resolve_environment(name: str) -> Environment:
    """The named cloud; ``AzureStackCloud`` is read, as go-autorest reads it, from the JSON
    file named by ``AZURE_ENVIRONMENT_FILEPATH`` (``resourceManagerEndpoint``,
    ``activeDirectoryEndpoint``, optional ``tokenAudience``)."""
    if name.lower() != STACK:
        return ENVIRONMENTS[name.lower()]
    path = os.environ.get(STACK_FILE_VARIABLE, "")
    if not path:
        raise ValueError(f"environment {name!r} needs {STACK_FILE_VARIABLE} to name a file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        env = Environment(authority=data["activeDirectoryEndpoint"].rstrip("/"),
                          resource_manager=data["resourceManagerEndpoint"].rstrip("/"),
                          token_audience=(data.get("tokenAudience") or "").rstrip("/"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{STACK_FILE_VARIABLE} {path}: cannot read the Azure Stack "
                         f"environment ({type(exc).__name__}: {exc})") from None
    return env


class AzureConfig(trawl.DiscovererConfig):
    """``[[azure]]``: Kapacitor's keys plus ``resource-group``, ``environment``,
    ``authentication-method`` and ``resource-manager-endpoint``."""

    port: int = 80
    subscription_id: str = ""
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    refresh_interval: trawl.Duration = 300.0
    resource_group: str = ""
    environment: str = "AzurePublicCloud"
    authentication_method: Literal["OAuth", "ManagedIdentity", "SDK"] = "OAuth"
    resource_manager_endpoint: str = ""

    @field_validator("port")
    @classmethod
    def _port(cls, port: int) -> int:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not between 1 and 65535")
        return port

    @field_validator("environment")
    @classmethod
    def _environment(cls, name: str) -> str:
        if name.lower() not in ENVIRONMENTS and name.lower() != STACK:
            raise ValueError(f"unknown environment {name!r}; known: AzurePublicCloud, "
                             "AzureChinaCloud, AzureGermanCloud, AzureUSGovernmentCloud, "
                             "AzureStackCloud")
        return name

    @field_validator("resource_manager_endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        if url and not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _required(self) -> AzureConfig:
        # Kapacitor's sample section is disabled with every key empty: that must load.
        if not self.enabled:
            return self
        missing = ["subscription-id"] if not self.subscription_id else []
        if self.authentication_method == "OAuth":
            missing += [key for key, value in (
                ("tenant-id", self.tenant_id), ("client-id", self.client_id),
                ("client-secret", self.client_secret.get_secret_value())) if not value]
        if missing:
            raise ValueError(f"authentication-method {self.authentication_method!r} needs "
                             + ", ".join(missing))
        return self



@dataclass
class Machine:
    """What discovery needs of a virtual machine or a scale-set VM."""

    id: str
    name: str
    computer_name: str
    location: str
    os_type: str
    size: str
    scale_set: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    nic_ids: list[str] = field(default_factory=list)


class NicNotFound(Exception):
    pass


def sanitize(name: str) -> str:
    """A label name from an Azure tag name, as Prometheus's ``SanitizeLabelName``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def resource_group_of(resource_id: str) -> str:
    """The (lower-cased) resource group of an ARM ID, as Prometheus reads it."""
    parts = resource_id.split("/")
    if len(parts) not in (9, 11):
        raise ValueError(f"invalid Azure resource ID {resource_id!r}")
    return parts[4].lower()


def _text(value: Any) -> str:
    """An SDK value as Azure wrote it: enums (``OperatingSystemTypes.LINUX``) by value."""
    if value is None:
        return ""
    return str(value.value) if isinstance(value, Enum) else str(value)


def _walk(obj: Any, *names: str) -> Any:
    for name in names:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def to_machine(vm: Any, scale_set: str = "") -> Machine:
    """A `Machine` from an SDK ``VirtualMachine`` or ``VirtualMachineScaleSetVM``."""
    props = vm.properties
    nics = _walk(props, "network_profile", "network_interfaces") or []
    return Machine(
        id=vm.id or "",
        name=vm.name or "",
        computer_name=_walk(props, "os_profile", "computer_name") or "",
        location=vm.location or "",
        os_type=_text(_walk(props, "storage_profile", "os_disk", "os_type")),
        size=_text(_walk(props, "hardware_profile", "vm_size")),
        scale_set=scale_set,
        tags={k: v for k, v in (vm.tags or {}).items() if v is not None},
        nic_ids=[n.id for n in nics if n.id],
    )


def machine_labels(machine: Machine, config: AzureConfig) -> dict[str, str]:
    """The labels of a machine that do not depend on its network interfaces."""
    labels = {
        META + "subscription_id": config.subscription_id,
        META + "tenant_id": config.tenant_id,
        META + "machine_id": machine.id,
        META + "machine_name": machine.name,
        META + "machine_computer_name": machine.computer_name,
        META + "machine_os_type": machine.os_type,
        META + "machine_location": machine.location,
        META + "machine_resource_group": resource_group_of(machine.id),
        META + "machine_size": machine.size,
    }
    if machine.scale_set:
        labels[META + "machine_scale_set"] = machine.scale_set
    for key, value in machine.tags.items():
        labels[META + "machine_tag_" + sanitize(key)] = value
    return labels


class AzureClients:
    """The SDK clients of one discoverer; every method blocks (call from a worker thread)."""

    def __init__(self, config: AzureConfig) -> None:
        from azure.identity import (
            ClientSecretCredential,
            DefaultAzureCredential,
            ManagedIdentityCredential,
        )
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient

        self.config = config
        transport: dict[str, Any] = {"connection_timeout": _TIMEOUT, "read_timeout": _TIMEOUT,
                                     "retry_total": 0}
        cloud = resolve_environment(config.environment)
        endpoint = config.resource_manager_endpoint or cloud.resource_manager
        audience = (cloud.token_audience or endpoint if not config.resource_manager_endpoint
                    else endpoint)
        scope = audience + "/.default"
        authority: dict[str, Any] = {}
        if config.environment.lower() != "azurepubliccloud":
            # The public cloud's authority can be replaced by AZURE_AUTHORITY_HOST.
            authority["authority"] = cloud.authority
        self.credential: Any
        if config.authentication_method == "OAuth":
            self.credential = ClientSecretCredential(
                config.tenant_id, config.client_id, config.client_secret.get_secret_value(),
                # MSAL would otherwise ask login.microsoftonline.com about any authority.
                disable_instance_discovery=True, **authority, **transport)
        elif config.authentication_method == "ManagedIdentity":
            self.credential = ManagedIdentityCredential(client_id=config.client_id or None,
                                                        **transport)
        else:
            self.credential = DefaultAzureCredential(disable_instance_discovery=True,
                                                     **authority, **transport)
        common = {"base_url": endpoint, "credential_scopes": [scope], **transport}
        self.compute = ComputeManagementClient(self.credential, config.subscription_id,
                                               **common)
        self.network = NetworkManagementClient(self.credential, config.subscription_id,
                                               **common)

    def close(self) -> None:
        self.compute.close()
        self.network.close()
        self.credential.close()

    def list_machines(self) -> list[Machine]:
        """Every VM, then every scale set's VMs (of ``resource-group`` if set), all pages."""
        rg = self.config.resource_group
        vms = self.compute.virtual_machines
        pages = vms.list(rg) if rg else vms.list_all()
        machines = [to_machine(vm) for vm in pages]
        sets = self.compute.virtual_machine_scale_sets
        for scale_set in list(sets.list(rg) if rg else sets.list_all()):
            group, name = resource_group_of(scale_set.id or ""), scale_set.name or ""
            for vm in self.compute.virtual_machine_scale_set_vms.list(group, name):
                machines.append(to_machine(vm, name))
        return machines

    def get_nic(self, nic_id: str) -> Any:
        """A network interface by its ARM ID (standalone or scale-set); `NicNotFound` on 404."""
        from azure.core.exceptions import ResourceNotFoundError

        parts = nic_id.split("/")
        nics = self.network.network_interfaces
        try:
            if len(parts) == 9:
                return nics.get(parts[4], parts[8])
            if len(parts) == 13:
                return nics.get_virtual_machine_scale_set_network_interface(
                    parts[4], parts[8], parts[10], parts[12])
        except ResourceNotFoundError as exc:
            raise NicNotFound(nic_id) from exc
        raise ValueError(f"invalid network interface ID {nic_id!r}")


def primary_address(machine: Machine, nics: list[Any]) -> tuple[str, str] | None:
    """(private IP, public IP or "") of the machine's primary NIC, as Prometheus 2.42 picks
    it: NICs in order, the first ``primary`` one's first IP configuration. None when a NIC
    has no ``primary`` flag at all (a deallocated VM) or none is primary."""
    for nic in nics:
        props = nic.properties
        if props is None:
            continue
        if props.primary is None:
            log.debug("skipping deallocated virtual machine %s", machine.name)
            return None
        if not props.primary:
            continue
        for ip in props.ip_configurations or []:
            public = _walk(ip, "properties", "public_ip_address", "properties", "ip_address")
            private = _walk(ip, "properties", "private_ip_address")
            if private:
                return private, public or ""
            raise RuntimeError(f"unable to find a private IP for VM {machine.name}")
    return None


class AzureDiscoverer(trawl.RefreshDiscoverer):
    """Virtual machines and scale-set VMs of one Azure subscription, one target each."""

    kind = "azure"
    Config = AzureConfig

    def __init__(self, config: AzureConfig) -> None:
        super().__init__(config)
        self.config: AzureConfig = config
        self._clients: AzureClients | None = None
        self._limiter = trio.CapacityLimiter(_CONCURRENCY)

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the SDK clients' connections, if any."""
        clients, self._clients = self._clients, None
        if clients is not None:
            clients.close()

    @property
    def source(self) -> str:
        return f"azure/{self.config.subscription_id}/{self.config.resource_group}"

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter,
                                             abandon_on_cancel=True)

    async def refresh(self) -> list[trawl.TargetGroup]:
        try:
            return await self._refresh()
        except Exception as exc:
            # Start afresh next time, leaving any abandoned worker thread its own clients.
            if not isinstance(exc, trio.TooSlowError):
                self.close()
            self._clients = None
            raise RuntimeError(self._scrub(exc)) from None

    def _scrub(self, exc: BaseException) -> str:
        """The error as text without the client secret, whatever the SDK put in it."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        secret = self.config.client_secret.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        return text

    async def _refresh(self) -> list[trawl.TargetGroup]:
        with trio.fail_after(_REFRESH_TIMEOUT):
            return await self._refresh_within()

    async def _refresh_within(self) -> list[trawl.TargetGroup]:
        if self._clients is None:
            self._clients = await self._thread(AzureClients, self.config)
        clients = self._clients
        try:
            machines: list[Machine] = await self._thread(clients.list_machines)
        except Exception as exc:
            raise RuntimeError(f"could not list virtual machines: {self._scrub(exc)}") from None
        results: dict[int, dict[str, str]] = {}
        errors: list[str] = []

        async def resolve(index: int, machine: Machine) -> None:
            nics = []
            for nic_id in machine.nic_ids:
                try:
                    nic = await self._thread(clients.get_nic, nic_id)
                except NicNotFound:
                    log.warning("network interface %s of %s does not exist", nic_id,
                                machine.name)
                    return
                except Exception as exc:
                    errors.append(f"network interface {nic_id}: {self._scrub(exc)}")
                    return
                nics.append(nic)
                if nic.properties is not None and (nic.properties.primary is None
                                                   or nic.properties.primary):
                    break
            try:
                address = primary_address(machine, nics)
                if address is None:
                    return
                labels = machine_labels(machine, self.config)
            except (RuntimeError, ValueError) as exc:
                errors.append(str(exc))
                return
            private, public = address
            labels[META + "machine_private_ip"] = private
            if public:
                labels[META + "machine_public_ip"] = public
            host = f"[{private}]" if ":" in private else private
            labels["__address__"] = f"{host}:{self.config.port}"
            results[index] = {k: v for k, v in labels.items() if v}

        async with trio.open_nursery() as nursery:
            for index, machine in enumerate(machines):
                nursery.start_soon(resolve, index, machine)
        if errors:
            raise RuntimeError("unable to complete Azure service discovery: " + errors[0])
        targets: list[Mapping[str, str]] = [results[i] for i in sorted(results)]
        return [trawl.group(self.source, targets)]
