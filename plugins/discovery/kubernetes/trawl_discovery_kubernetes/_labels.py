"""Target groups per role, with the labels Prometheus 2.42 documents and produces.

Each builder takes one API object (a JSON dict as the API server sends it) and returns
its `trawl.TargetGroup`; the source is Prometheus's (``pod/<ns>/<name>``, ``svc/...``,
``endpoints/...``, ``endpointslice/...``, ``ingress/...``, ``node/<name>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import trawl

Obj = dict[str, Any]
Labels = dict[str, str]
P = "__meta_kubernetes_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

# Lookup of an already known object: (namespace, name) -> object or None.
Lookup = Callable[[str, str], "Obj | None"]
Key = tuple[str, str]


def sanitize(name: str) -> str:
    return _INVALID.sub("_", name)


def _meta(obj: Obj) -> Obj:
    meta: Obj = obj.get("metadata") or {}
    return meta


def key_of(obj: Obj) -> tuple[str, str]:
    meta = _meta(obj)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _label_annotation(out: Labels, prefix: str, obj: Obj, annotations: bool = True) -> None:
    meta = _meta(obj)
    for k, v in (meta.get("labels") or {}).items():
        ln = sanitize(k)
        out[f"{prefix}_label_{ln}"] = str(v)
        out[f"{prefix}_labelpresent_{ln}"] = "true"
    if annotations:
        for k, v in (meta.get("annotations") or {}).items():
            ln = sanitize(k)
            out[f"{prefix}_annotation_{ln}"] = str(v)
            out[f"{prefix}_annotationpresent_{ln}"] = "true"


def _join(host: str, port: Any) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


# --- pod -------------------------------------------------------------------------------

def pod_labels(pod: Obj) -> Labels:
    """The labels every target of a pod carries (Prometheus's ``podLabels``)."""
    meta, spec, status = _meta(pod), pod.get("spec") or {}, pod.get("status") or {}
    ready = "unknown"
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Ready":
            ready = str(cond.get("status", "")).lower()
            break
    out: Labels = {
        P + "pod_name": str(meta.get("name", "")),
        P + "pod_ip": str(status.get("podIP", "")),
        P + "pod_ready": ready,
        P + "pod_phase": str(status.get("phase", "")),
        P + "pod_node_name": str(spec.get("nodeName", "")),
        P + "pod_host_ip": str(status.get("hostIP", "")),
        P + "pod_uid": str(meta.get("uid", "")),
    }
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            if ref.get("kind"):
                out[P + "pod_controller_kind"] = str(ref["kind"])
            if ref.get("name"):
                out[P + "pod_controller_name"] = str(ref["name"])
            break
    _label_annotation(out, P + "pod", pod)
    return out


def _container_id(statuses: Any, name: str) -> str:
    for st in statuses or ():
        if st.get("name") == name:
            return str(st.get("containerID", ""))
    return ""


def pod_group(pod: Obj) -> trawl.TargetGroup:
    ns, name = key_of(pod)
    source = f"pod/{ns}/{name}"
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    ip = status.get("podIP") or ""
    if not ip:
        # Starting or evicted: no address yet, so no targets.
        return trawl.TargetGroup(source)
    labels = pod_labels(pod)
    labels[P + "namespace"] = ns
    targets: list[Labels] = []
    containers = [(c, False) for c in spec.get("containers") or ()]
    containers += [(c, True) for c in spec.get("initContainers") or ()]
    for c, is_init in containers:
        statuses = status.get("initContainerStatuses" if is_init else "containerStatuses")
        common = {
            P + "pod_container_name": str(c.get("name", "")),
            P + "pod_container_id": _container_id(statuses, c.get("name", "")),
            P + "pod_container_image": str(c.get("image", "")),
            P + "pod_container_init": "true" if is_init else "false",
        }
        ports = c.get("ports") or ()
        if not ports:
            targets.append({"__address__": ip, **common})
            continue
        for port in ports:
            number = str(port.get("containerPort", 0))
            targets.append({
                "__address__": _join(ip, number), **common,
                P + "pod_container_port_number": number,
                P + "pod_container_port_name": str(port.get("name", "")),
                P + "pod_container_port_protocol": str(port.get("protocol", "")),
            })
    return trawl.TargetGroup(source, tuple(targets), labels)


# --- service ---------------------------------------------------------------------------

def service_labels(svc: Obj) -> Labels:
    ns, name = key_of(svc)
    out: Labels = {P + "service_name": name, P + "namespace": ns}
    _label_annotation(out, P + "service", svc)
    return out


def service_group(svc: Obj) -> trawl.TargetGroup:
    ns, name = key_of(svc)
    spec = svc.get("spec") or {}
    kind = str(spec.get("type", ""))
    targets = []
    for port in spec.get("ports") or ():
        number = str(port.get("port", 0))
        t: Labels = {
            "__address__": _join(f"{name}.{ns}.svc", number),
            P + "service_port_name": str(port.get("name", "")),
            P + "service_port_number": number,
            P + "service_port_protocol": str(port.get("protocol", "")),
            P + "service_type": kind,
        }
        if kind == "ExternalName":
            t[P + "service_external_name"] = str(spec.get("externalName", ""))
        else:
            t[P + "service_cluster_ip"] = str(spec.get("clusterIP", ""))
        if kind == "LoadBalancer":
            t[P + "service_loadbalancer_ip"] = str(spec.get("loadBalancerIP", ""))
        targets.append(t)
    return trawl.TargetGroup(f"svc/{ns}/{name}", tuple(targets), service_labels(svc))


# --- endpoints and endpoint slices -----------------------------------------------------

class _SeenPods:
    """Pods met through addresses, with the ports already covered, in order of meeting."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], tuple[Obj, list[Any]]] = {}

    def add(self, pod: Obj, port: Any) -> None:
        self.pods.setdefault(key_of(pod), (pod, []))[1].append(port)

    def remaining_targets(self) -> list[Labels]:
        """Targets for container ports of seen pods that no endpoint port covered."""
        out = []
        for pod, ports in self.pods.values():
            ip = str((pod.get("status") or {}).get("podIP", ""))
            for c in (pod.get("spec") or {}).get("containers") or ():
                for cport in c.get("ports") or ():
                    number = cport.get("containerPort", 0)
                    if number in ports:
                        continue
                    out.append({
                        "__address__": _join(ip, number),
                        P + "pod_container_name": str(c.get("name", "")),
                        P + "pod_container_image": str(c.get("image", "")),
                        P + "pod_container_port_name": str(cport.get("name", "")),
                        P + "pod_container_port_number": str(number),
                        P + "pod_container_port_protocol": str(cport.get("protocol", "")),
                        **pod_labels(pod),
                    })
        return out


def _resolve_pod(ref: Any, pods: Lookup) -> Obj | None:
    if not isinstance(ref, Mapping) or ref.get("kind") != "Pod":
        return None
    return pods(str(ref.get("namespace", "")), str(ref.get("name", "")))


def _match_container(target: Labels, pod: Obj, port: Any, protocol: str | None) -> None:
    """Container labels for the container port equal to ``port`` (the last such wins)."""
    if port is None:
        return
    for c in (pod.get("spec") or {}).get("containers") or ():
        for cport in c.get("ports") or ():
            if cport.get("containerPort") == port:
                target[P + "pod_container_name"] = str(c.get("name", ""))
                target[P + "pod_container_image"] = str(c.get("image", ""))
                target[P + "pod_container_port_name"] = str(cport.get("name", ""))
                target[P + "pod_container_port_number"] = str(port)
                target[P + "pod_container_port_protocol"] = (
                    protocol if protocol is not None else str(cport.get("protocol", "")))
                break


def endpoints_group(eps: Obj, pods: Lookup, services: Lookup) -> trawl.TargetGroup:
    ns, name = key_of(eps)
    labels: Labels = {P + "namespace": ns, P + "endpoints_name": name}
    svc = services(ns, name)
    if svc is not None:
        labels.update(service_labels(svc))
    _label_annotation(labels, P + "endpoints", eps, annotations=False)
    seen = _SeenPods()
    targets: list[Labels] = []

    def add(addr: Obj, port: Obj, ready: str) -> None:
        number = port.get("port", 0)
        t: Labels = {
            "__address__": _join(str(addr.get("ip", "")), number),
            P + "endpoint_port_name": str(port.get("name", "")),
            P + "endpoint_port_protocol": str(port.get("protocol", "")),
            P + "endpoint_ready": ready,
        }
        ref = addr.get("targetRef")
        if ref:
            t[P + "endpoint_address_target_kind"] = str(ref.get("kind", ""))
            t[P + "endpoint_address_target_name"] = str(ref.get("name", ""))
        if addr.get("nodeName") is not None:
            t[P + "endpoint_node_name"] = str(addr["nodeName"])
        if addr.get("hostname"):
            t[P + "endpoint_hostname"] = str(addr["hostname"])
        pod = _resolve_pod(ref, pods)
        if pod is not None:
            t.update(pod_labels(pod))
            _match_container(t, pod, number, str(port.get("protocol", "")))
            seen.add(pod, number)
        targets.append(t)

    for subset in eps.get("subsets") or ():
        for port in subset.get("ports") or ():
            for addr in subset.get("addresses") or ():
                add(addr, port, "true")
            for addr in subset.get("notReadyAddresses") or ():
                add(addr, port, "false")
    targets.extend(seen.remaining_targets())
    return trawl.TargetGroup(f"endpoints/{ns}/{name}", tuple(targets), labels)


def endpointslice_group(eps: Obj, pods: Lookup, services: Lookup) -> trawl.TargetGroup:
    ns, name = key_of(eps)
    labels: Labels = {P + "namespace": ns, P + "endpointslice_name": name,
                      P + "endpointslice_address_type": str(eps.get("addressType", ""))}
    svc_name = (_meta(eps).get("labels") or {}).get("kubernetes.io/service-name")
    if svc_name is not None:
        svc = services(ns, svc_name)
        if svc is not None:
            labels.update(service_labels(svc))
    seen = _SeenPods()
    targets: list[Labels] = []
    for ep in eps.get("endpoints") or ():
        conditions = ep.get("conditions") or {}
        ref = ep.get("targetRef")
        for port in eps.get("ports") or ():
            number = port.get("port")
            for addr in ep.get("addresses") or ():
                t: Labels = {"__address__": _join(addr, number) if number is not None else addr}
                if port.get("name") is not None:
                    t[P + "endpointslice_port_name"] = str(port["name"])
                if port.get("protocol") is not None:
                    t[P + "endpointslice_port_protocol"] = str(port["protocol"])
                if number is not None:
                    t[P + "endpointslice_port"] = str(number)
                if port.get("appProtocol") is not None:
                    t[P + "endpointslice_port_app_protocol"] = str(port["appProtocol"])
                for cond in ("ready", "serving", "terminating"):
                    if conditions.get(cond) is not None:
                        t[P + f"endpointslice_endpoint_conditions_{cond}"] = (
                            "true" if conditions[cond] else "false")
                if ep.get("hostname") is not None:
                    t[P + "endpointslice_endpoint_hostname"] = str(ep["hostname"])
                if ref:
                    t[P + "endpointslice_address_target_kind"] = str(ref.get("kind", ""))
                    t[P + "endpointslice_address_target_name"] = str(ref.get("name", ""))
                for k, v in (ep.get("deprecatedTopology") or {}).items():
                    ln = sanitize(k)
                    t[P + "endpointslice_endpoint_topology_" + ln] = str(v)
                    t[P + "endpointslice_endpoint_topology_present_" + ln] = "true"
                pod = _resolve_pod(ref, pods)
                if pod is not None:
                    t.update(pod_labels(pod))
                    _match_container(t, pod, number, None)
                    seen.add(pod, number)
                targets.append(t)
    targets.extend(seen.remaining_targets())
    return trawl.TargetGroup(f"endpointslice/{ns}/{name}", tuple(targets), labels)


def references(obj: Obj, role: str) -> set[tuple[str, Key]]:
    """The pods and the service whose labels an endpoints object or slice carries."""
    ns, name = key_of(obj)
    refs: set[tuple[str, Key]] = set()
    if role == "endpoints":
        refs.add(("services", (ns, name)))
        addresses = [a for subset in obj.get("subsets") or ()
                     for field in ("addresses", "notReadyAddresses")
                     for a in subset.get(field) or ()]
    else:
        svc = (_meta(obj).get("labels") or {}).get("kubernetes.io/service-name")
        if svc is not None:
            refs.add(("services", (ns, str(svc))))
        addresses = list(obj.get("endpoints") or ())
    for addr in addresses:
        ref = addr.get("targetRef") if isinstance(addr, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("kind") == "Pod":
            refs.add(("pods", (str(ref.get("namespace", "")), str(ref.get("name", "")))))
    return refs


# --- ingress ---------------------------------------------------------------------------

def _host_matches(pattern: str, host: str) -> bool:
    if pattern == host:
        return True
    pp, hp = pattern.split("."), host.split(".")
    if not pp or pp[0] != "*" or len(pp) != len(hp):
        return False
    return pp[1:] == hp[1:]


def ingress_group(ing: Obj) -> trawl.TargetGroup:
    ns, name = key_of(ing)
    spec = ing.get("spec") or {}
    labels: Labels = {P + "ingress_name": name, P + "namespace": ns}
    if spec.get("ingressClassName") is not None:
        labels[P + "ingress_class_name"] = str(spec["ingressClassName"])
    _label_annotation(labels, P + "ingress", ing)
    tls_hosts = [h for tls in spec.get("tls") or () for h in tls.get("hosts") or ()]
    targets = []
    for rule in spec.get("rules") or ():
        host = str(rule.get("host", ""))
        http = rule.get("http")
        paths = ["/"] if http is None else [
            str(p.get("path") or "/") for p in http.get("paths") or ()]
        scheme = "https" if any(_host_matches(p, host) for p in tls_hosts) else "http"
        for path in paths:
            targets.append({"__address__": host, P + "ingress_scheme": scheme,
                            P + "ingress_host": host, P + "ingress_path": path})
    return trawl.TargetGroup(f"ingress/{ns}/{name}", tuple(targets), labels)


# --- node ------------------------------------------------------------------------------

_NODE_ADDRESS_ORDER = ("InternalIP", "InternalDNS", "ExternalIP", "ExternalDNS",
                       "LegacyHostIP", "Hostname")


def node_group(node: Obj) -> trawl.TargetGroup:
    _, name = key_of(node)
    source = f"node/{name}"
    meta, spec, status = _meta(node), node.get("spec") or {}, node.get("status") or {}
    labels: Labels = {P + "node_name": str(meta.get("name", "")),
                      P + "node_provider_id": str(spec.get("providerID", ""))}
    _label_annotation(labels, P + "node", node)
    by_type: dict[str, str] = {}
    for a in status.get("addresses") or ():
        by_type.setdefault(str(a.get("type", "")), str(a.get("address", "")))
    address = next((by_type[t] for t in _NODE_ADDRESS_ORDER if t in by_type), None)
    if address is None:
        return trawl.TargetGroup(source)
    kubelet = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {})
    port = kubelet.get("Port", kubelet.get("port", 0))
    target: Labels = {"__address__": _join(address, port), "instance": name}
    for kind, addr in by_type.items():
        target[sanitize(P + "node_address_" + kind)] = addr
    return trawl.TargetGroup(source, (target,), labels)
