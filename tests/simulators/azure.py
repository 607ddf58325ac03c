"""A loopback simulator of Azure Resource Manager and the Entra ID (AAD) token endpoints.

It speaks what Azure service discovery uses, over HTTPS (azure-identity refuses plain-HTTP
authorities):

- ``POST /<tenant>/oauth2/v2.0/token`` (client credentials, what azure-identity/MSAL use) and
  ``POST /<tenant>/oauth2/token`` (the v1 endpoint Prometheus's go-autorest/adal uses); a
  wrong client secret gets ``401 {"error": "invalid_client", "error_description":
  "AADSTS7000215: Invalid client secret provided. ..."}``;
- ``GET /<tenant>/v2.0/.well-known/openid-configuration`` (MSAL reads it first);
- ``GET /metadata/identity/oauth2/token`` (the managed-identity endpoint of IMDS; point
  azure-identity at it with ``AZURE_POD_IDENTITY_AUTHORITY_HOST``);
- ARM: ``/subscriptions/<sub>[/resourceGroups/<rg>]/providers/Microsoft.Compute/
  virtualMachines``, ``.../virtualMachineScaleSets``, ``.../virtualMachineScaleSets/<ss>/
  virtualMachines``, ``.../Microsoft.Network/networkInterfaces/<nic>`` and the scale-set NIC
  path ``.../virtualMachineScaleSets/<ss>/virtualMachines/<i>/networkInterfaces/<nic>``,
  each requiring ``api-version`` and a bearer token, with ``nextLink`` paging
  (``$skiptoken``) and ARM error bodies ``{"error": {"code", "message"}}``.

Paths are matched case-insensitively, as ARM does. Every address it hands out is loopback.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?\Z")


def _loopback(ip: str) -> str:
    if not ipaddress.ip_address(ip).is_loopback:
        raise ValueError(f"simulator addresses must be loopback, not {ip}")
    return ip


@dataclass
class Nic:
    """A network interface: ``primary`` None models a deallocated VM's NIC."""

    name: str
    private_ip: str
    public_ip: str | None = None
    primary: bool | None = True

    def __post_init__(self) -> None:
        _loopback(self.private_ip)
        if self.public_ip is not None:
            _loopback(self.public_ip)


@dataclass
class VM:
    name: str
    nics: list[Nic]
    location: str = "westeurope"
    os_type: str = "Linux"
    size: str = "Standard_A1"
    computer_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Calls:
    tokens: int = 0
    token_failures: int = 0
    arm: list[str] = field(default_factory=list)


class AzureSimulator:
    """ARM + AAD on ``https://127.0.0.1:<port>``; a context manager.

    Args:
      tenant_id, client_id, client_secret: the one service principal the token endpoint
        accepts.
      subscription_id: the subscription ARM serves.
      page_size: items per list page; lists longer than this get a ``nextLink``.
    """

    def __init__(self, workdir: Path, *, tenant_id: str, client_id: str, client_secret: str,
                 subscription_id: str, page_size: int = 2) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.subscription_id = subscription_id
        self.page_size = page_size
        self.lock = threading.Lock()
        self.vms: dict[str, dict[str, VM]] = {}                 # rg -> name -> VM
        self.scale_sets: dict[str, dict[str, list[VM]]] = {}    # rg -> name -> instances
        self.tokens: set[str] = set()
        self.deleted_nics: set[str] = set()                     # listed by VMs, GET is 404
        self.calls = _Calls()
        self.fail_arm: tuple[int, str, str] | None = None       # (status, code, message)
        self.delay = 0.0                                        # seconds before each ARM answer
        self.ca = trustme.CA()
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = workdir / "azure-sim-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ state
    def add_vm(self, resource_group: str, vm: VM) -> None:
        with self.lock:
            self.vms.setdefault(resource_group, {})[vm.name] = vm

    def remove_vm(self, resource_group: str, name: str) -> None:
        with self.lock:
            del self.vms[resource_group][name]

    def add_scale_set(self, resource_group: str, name: str, instances: list[VM]) -> None:
        with self.lock:
            self.scale_sets.setdefault(resource_group, {})[name] = instances

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ JSON shapes
    def _rg_prefix(self, rg: str) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"

    def vm_id(self, rg: str, name: str) -> str:
        return f"{self._rg_prefix(rg)}/providers/Microsoft.Compute/virtualMachines/{name}"

    def nic_id(self, rg: str, nic: str) -> str:
        return f"{self._rg_prefix(rg)}/providers/Microsoft.Network/networkInterfaces/{nic}"

    def scale_set_id(self, rg: str, name: str) -> str:
        return f"{self._rg_prefix(rg)}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"

    def _vm_json(self, rg: str, vm: VM, nic_ids: list[str], vm_id: str,
                 vm_type: str, extra: dict[str, Any]) -> dict[str, Any]:
        props: dict[str, Any] = {
            "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, vm_id)),
            "storageProfile": {"osDisk": {"osType": vm.os_type, "name": f"{vm.name}_OsDisk",
                                          "createOption": "FromImage", "caching": "ReadWrite"}},
            "osProfile": {"computerName": vm.computer_name or vm.name,
                          "adminUsername": "azureuser"},
            "networkProfile": {"networkInterfaces": [
                {"id": nid, "properties": {"primary": bool(nic.primary)}}
                for nid, nic in zip(nic_ids, vm.nics, strict=True)
            ]},
            "provisioningState": "Succeeded",
        }
        if vm.size:
            props["hardwareProfile"] = {"vmSize": vm.size}
        out: dict[str, Any] = {"id": vm_id, "name": vm.name, "type": vm_type,
                               "location": vm.location, "properties": props, **extra}
        if vm.tags:
            out["tags"] = dict(vm.tags)
        return out

    def _nic_json(self, nic_id: str, vm_id: str, nic: Nic, location: str) -> dict[str, Any]:
        ipconf: dict[str, Any] = {
            "privateIPAddress": nic.private_ip, "privateIPAllocationMethod": "Dynamic",
            "privateIPAddressVersion": "IPv4", "primary": True,
            "provisioningState": "Succeeded",
            "subnet": {"id": f"{nic_id.split('/providers/')[0]}/providers/Microsoft.Network/"
                             "virtualNetworks/vnet/subnets/default"},
        }
        if nic.public_ip is not None:
            ipconf["publicIPAddress"] = {
                "id": f"{nic_id.split('/providers/')[0]}/providers/Microsoft.Network/"
                      f"publicIPAddresses/{nic.name}-ip",
                "properties": {"ipAddress": nic.public_ip, "publicIPAllocationMethod": "Static",
                               "publicIPAddressVersion": "IPv4"},
            }
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "ipConfigurations": [{"id": f"{nic_id}/ipConfigurations/ipconfig1",
                                  "name": "ipconfig1", "properties": ipconf}],
            "virtualMachine": {"id": vm_id},
            "enableAcceleratedNetworking": False,
            "enableIPForwarding": False,
        }
        if nic.primary is not None:
            props["primary"] = nic.primary
        return {"id": nic_id, "name": nic.name, "type": "Microsoft.Network/networkInterfaces",
                "location": location, "properties": props}

    def _list_vms(self, rg: str | None) -> list[dict[str, Any]]:
        out = []
        for group, vms in sorted(self.vms.items()):
            if rg is not None and group.lower() != rg.lower():
                continue
            for vm in vms.values():
                out.append(self._vm_json(group, vm, [self.nic_id(group, n.name) for n in vm.nics],
                                         self.vm_id(group, vm.name),
                                         "Microsoft.Compute/virtualMachines", {}))
        return out

    def _list_scale_sets(self, rg: str | None) -> list[dict[str, Any]]:
        out = []
        for group, sets in sorted(self.scale_sets.items()):
            if rg is not None and group.lower() != rg.lower():
                continue
            for name, instances in sets.items():
                out.append({"id": self.scale_set_id(group, name), "name": name,
                            "type": "Microsoft.Compute/virtualMachineScaleSets",
                            "location": instances[0].location if instances else "westeurope",
                            "sku": {"name": "Standard_A1", "tier": "Standard",
                                    "capacity": len(instances)},
                            "properties": {"provisioningState": "Succeeded",
                                           "upgradePolicy": {"mode": "Manual"}}})
        return out

    def _scale_set(self, rg: str, name: str) -> tuple[str, str, list[VM]] | None:
        for group, sets in self.scale_sets.items():
            if group.lower() != rg.lower():
                continue
            for ss_name, instances in sets.items():
                if ss_name.lower() == name.lower():
                    return group, ss_name, instances
        return None

    def _list_scale_set_vms(self, rg: str, name: str) -> list[dict[str, Any]] | None:
        found = self._scale_set(rg, name)
        if found is None:
            return None
        group, ss_name, instances = found
        out = []
        for index, vm in enumerate(instances):
            vm_id = f"{self.scale_set_id(group, ss_name)}/virtualMachines/{index}"
            nic_ids = [f"{vm_id}/networkInterfaces/{n.name}" for n in vm.nics]
            out.append(self._vm_json(group, vm, nic_ids, vm_id,
                                     "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
                                     {"instanceId": str(index)}))
        return out

    def _get_nic(self, rg: str, name: str) -> dict[str, Any] | None:
        for group, vms in self.vms.items():
            if group.lower() != rg.lower():
                continue
            for vm in vms.values():
                for nic in vm.nics:
                    if nic.name.lower() == name.lower() and nic.name not in self.deleted_nics:
                        return self._nic_json(self.nic_id(group, nic.name),
                                              self.vm_id(group, vm.name), nic, vm.location)
        return None

    def _get_scale_set_nic(self, rg: str, ss: str, index: str, name: str
                           ) -> dict[str, Any] | None:
        found = self._scale_set(rg, ss)
        if found is None or not index.isdigit() or int(index) >= len(found[2]):
            return None
        group, ss_name, instances = found
        vm = instances[int(index)]
        vm_id = f"{self.scale_set_id(group, ss_name)}/virtualMachines/{index}"
        for nic in vm.nics:
            if nic.name.lower() == name.lower():
                return self._nic_json(f"{vm_id}/networkInterfaces/{nic.name}", vm_id, nic,
                                      vm.location)
        return None

    # ------------------------------------------------------------------ server
    def start(self) -> AzureSimulator:
        sim = self

        class Handler(_Handler):
            simulator = sim

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> AzureSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    simulator: AzureSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _arm_error(self, status: int, code: str, message: str) -> None:
        self._send(status, {"error": {"code": code, "message": message}})

    def _aad_error(self, status: int, error: str, description: str) -> None:
        trace = str(uuid.uuid4())
        now = time.strftime("%Y-%m-%d %H:%M:%SZ")
        self._send(status, {
            "error": error,
            "error_description": f"{description}\r\nTrace ID: {trace}\r\nCorrelation ID: "
                                 f"{uuid.uuid4()}\r\nTimestamp: {now}",
            "error_codes": [int(description[6:description.index(':')])]
            if description.startswith("AADSTS") else [],
            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ"), "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        })

    # ---------------------------------------------------------------- AAD
    def do_POST(self) -> None:
        sim = self.simulator
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        v2 = parts[1:] == ["oauth2", "v2.0", "token"]
        v1 = parts[1:] == ["oauth2", "token"]
        if len(parts) < 3 or not (v1 or v2):
            self._aad_error(404, "invalid_request", "AADSTS90002: Endpoint not found.")
            return
        with sim.lock:
            sim.calls.tokens += 1
        if parts[0] != sim.tenant_id:
            with sim.lock:
                sim.calls.token_failures += 1
            self._aad_error(400, "invalid_request",
                            f"AADSTS90002: Tenant '{parts[0]}' not found.")
            return
        if form.get("grant_type") != "client_credentials":
            self._aad_error(400, "unsupported_grant_type",
                            "AADSTS70003: The app requested an unsupported grant type.")
            return
        if form.get("client_id") != sim.client_id:
            with sim.lock:
                sim.calls.token_failures += 1
            self._aad_error(400, "unauthorized_client",
                            f"AADSTS700016: Application with identifier "
                            f"'{form.get('client_id')}' was not found in the directory.")
            return
        if not secrets.compare_digest(form.get("client_secret", ""), sim.client_secret):
            with sim.lock:
                sim.calls.token_failures += 1
            self._aad_error(401, "invalid_client",
                            "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                            "being sent in the request is the client secret value, not the "
                            f"client secret ID, for a secret added to app '{sim.client_id}'.")
            return
        scope = form.get("scope", "") if v2 else form.get("resource", "")
        if v2 and not scope.endswith("/.default"):
            self._aad_error(400, "invalid_scope",
                            f"AADSTS1002012: The provided value for scope {scope} is not valid.")
            return
        self._send(200, self._token_body(v1, scope))

    def _token_body(self, v1: bool, resource: str) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        with self.simulator.lock:
            self.simulator.tokens.add(token)
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": 3599,
                                "ext_expires_in": 3599, "access_token": token}
        if v1:
            now = int(time.time())
            body.update({"expires_in": "3599", "ext_expires_in": "3599",
                         "expires_on": str(now + 3599), "not_before": str(now),
                         "resource": resource})
        return body

    def do_GET(self) -> None:
        sim = self.simulator
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        lower = [p.lower() for p in parts]
        if parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            base = f"{sim.url}/{parts[0]}"
            self._send(200, {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "private_key_jwt",
                                                          "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token"],
                "tenant_region_scope": "EU",
            })
            return
        if lower == ["metadata", "identity", "oauth2", "token"]:
            if self.headers.get("Metadata", "").lower() != "true":
                self._send(400, {"error": "invalid_request",
                                 "error_description": "Required metadata header not specified"})
                return
            with sim.lock:
                sim.calls.tokens += 1
            if query.get("client_id") not in (None, sim.client_id):
                self._send(400, {"error": "invalid_request",
                                 "error_description": "Identity not found"})
                return
            body = self._token_body(True, query.get("resource", ""))
            body["client_id"] = sim.client_id
            self._send(200, body)
            return
        if lower[:1] != ["subscriptions"]:
            self._arm_error(404, "NotFound", f"The requested path {url.path} was not found.")
            return
        self._arm(parts, lower, query)

    # ---------------------------------------------------------------- ARM
    def _arm(self, parts: list[str], lower: list[str], query: dict[str, str]) -> None:
        sim = self.simulator
        with sim.lock:
            sim.calls.arm.append(self.path)
        if sim.delay:
            time.sleep(sim.delay)
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self._arm_error(401, "AuthenticationFailed",
                            "Authentication failed. The 'Authorization' header is missing.")
            return
        if auth[7:] not in sim.tokens:
            self._arm_error(401, "InvalidAuthenticationToken",
                            "The access token is invalid.")
            return
        version = query.get("api-version", "")
        if not version:
            self._arm_error(400, "MissingApiVersionParameter",
                            "The api-version query parameter (?api-version=) is required for "
                            "all requests.")
            return
        if not _API_VERSION.match(version):
            self._arm_error(400, "InvalidApiVersionParameter",
                            f"The api-version '{version}' is invalid.")
            return
        if lower[1] != sim.subscription_id.lower():
            self._arm_error(404, "SubscriptionNotFound",
                            f"The subscription '{parts[1]}' could not be found.")
            return
        if sim.fail_arm is not None:
            status, code, message = sim.fail_arm
            self._arm_error(status, code, message)
            return
        rest = lower[2:]
        rg: str | None = None
        if rest[:1] == ["resourcegroups"] and len(rest) >= 2:
            rg, rest = parts[3], rest[2:]
            if not any(g.lower() == rg.lower() for g in [*sim.vms, *sim.scale_sets]):
                self._arm_error(404, "ResourceGroupNotFound",
                                f"Resource group '{rg}' could not be found.")
                return
        with sim.lock:
            items: list[dict[str, Any]] | dict[str, Any] | None = None
            if rest == ["providers", "microsoft.compute", "virtualmachines"]:
                items = sim._list_vms(rg)
            elif rest == ["providers", "microsoft.compute", "virtualmachinescalesets"]:
                items = sim._list_scale_sets(rg)
            elif (rg is not None and len(rest) == 5
                  and rest[:3] == ["providers", "microsoft.compute", "virtualmachinescalesets"]
                  and rest[4] == "virtualmachines"):
                items = sim._list_scale_set_vms(rg, parts[-2])
                if items is None:
                    self._arm_error(404, "ResourceNotFound",
                                    f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/"
                                    f"{parts[-2]}' under resource group '{rg}' was not found.")
                    return
            elif (rg is not None and len(rest) == 4
                  and rest[:3] == ["providers", "microsoft.network", "networkinterfaces"]):
                items = sim._get_nic(rg, parts[-1])
            elif (rg is not None and len(rest) == 8
                  and rest[:3] == ["providers", "microsoft.compute", "virtualmachinescalesets"]
                  and rest[4] == "virtualmachines" and rest[6] == "networkinterfaces"):
                items = sim._get_scale_set_nic(rg, parts[-5], parts[-3], parts[-1])
            else:
                self._arm_error(404, "InvalidResourceType",
                                f"The resource type could not be found for path "
                                f"{'/'.join(parts)}.")
                return
        if items is None:
            self._arm_error(404, "NotFound",
                            f"The Resource '{parts[-1]}' under resource group '{rg}' "
                            "was not found.")
            return
        if isinstance(items, dict):
            self._send(200, items)
            return
        skip = int(query.get("$skiptoken", "0") or 0)
        page = items[skip:skip + sim.page_size]
        body: dict[str, Any] = {"value": page}
        if skip + sim.page_size < len(items):
            next_query = dict(query)
            next_query["$skiptoken"] = str(skip + sim.page_size)
            path = urllib.parse.urlsplit(self.path).path
            body["nextLink"] = f"{sim.url}{path}?{urllib.parse.urlencode(next_query)}"
        self._send(200, body)
