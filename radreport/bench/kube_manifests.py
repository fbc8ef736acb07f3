"""The Helm chart's manifests made playable by ``podman kube play`` (podman 4.3).

podman plays Pods, Deployments, PersistentVolumeClaims and ConfigMaps. What a cluster adds is
done here, each step as the control plane or the kubelet would do it:
- a Deployment or StatefulSet is played as its pod template (one replica), named after the
  workload. The chart names each Service after its workload, so the Services' names resolve
  through podman's DNS; a Service whose port is not its pod's port cannot be emulated that
  way and is refused;
- a StatefulSet's volumeClaimTemplates become PersistentVolumeClaims (`data-NAME-0`);
- a Secret becomes a podman secret in the form podman's secretKeyRef reads (a JSON map of
  base64 values);
- `$(VAR)` in command and args is expanded from the container's environment;
- the pod's runAsUser/runAsGroup apply to each container that sets none.
Everything else is listed as not exercised.
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from typing import Any

PLAYED = {"ConfigMap", "PersistentVolumeClaim"}
WORKLOADS = {"Deployment", "StatefulSet"}
Doc = dict[str, Any]


@dataclass
class Playable:
    manifests: list[Doc] = field(default_factory=list)  # what `podman kube play` gets
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> base64
    pods: dict[str, Doc] = field(default_factory=dict)  # pod name -> pod spec
    not_exercised: dict[str, list[str]] = field(default_factory=dict)  # kind -> names


def _secret_values(docs: list[Doc]) -> dict[str, dict[str, str]]:
    secrets: dict[str, dict[str, str]] = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            data = dict(doc.get("data") or {})
            for key, value in (doc.get("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            secrets[doc["metadata"]["name"]] = data
    return secrets


def _config_maps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in docs
            if d["kind"] == "ConfigMap"}


def _environment(container: Doc, secrets: dict[str, dict[str, str]],
                 config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's environment as the kubelet resolves it (for `$(VAR)` expansion)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(config_maps.get(source["configMapRef"]["name"], {}))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in (ref := item.get("valueFrom") or {}):
            encoded = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
            env[item["name"]] = base64.b64decode(encoded).decode()
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = config_maps[key["name"]][key["key"]]
    return env


def _expand(words: list[str] | None, env: dict[str, str]) -> list[str] | None:
    if words is None:
        return None
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]


def _pod(workload: Doc, secrets: dict[str, dict[str, str]],
         config_maps: dict[str, dict[str, str]]) -> tuple[Doc, list[Doc]]:
    """The workload's pod template as a Pod named after it, and the claims it needs."""
    name = workload["metadata"]["name"]
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    claims = []
    for claim in workload["spec"].get("volumeClaimTemplates") or []:
        claim_name = f"{claim['metadata']['name']}-{name}-0"
        claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": claim_name}, "spec": claim["spec"]})
        spec.setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"],
             "persistentVolumeClaim": {"claimName": claim_name}})
    pod_security = spec.get("securityContext") or {}
    for container in spec.get("initContainers", []) + spec["containers"]:
        env = _environment(container, secrets, config_maps)
        for key in ("command", "args"):
            if container.get(key) is not None:
                container[key] = _expand(container[key], env)
        security = container.setdefault("securityContext", {})
        for key in ("runAsUser", "runAsGroup"):
            if key in pod_security and key not in security:
                security[key] = pod_security[key]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
           "spec": spec}
    return pod, claims


def _check_services(docs: list[Doc], pods: dict[str, Doc]) -> None:
    """Each Service must be reachable as its pod: same name, same port numbers."""
    for service in (d for d in docs if d["kind"] == "Service"):
        name = service["metadata"]["name"]
        selector = service["spec"].get("selector") or {}
        matched = [p for p in pods.values()
                   if selector.items() <= p["metadata"]["labels"].items()]
        if len(matched) != 1:
            raise ValueError(f"Service {name} selects {len(matched)} pods")
        ports = {p["name"]: p["containerPort"] for c in matched[0]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if ports.get(target, target) != port["port"]:
                raise ValueError(f"Service {name}: port {port['port']} -> {target} differs "
                                 "from the pod's port; podman cannot play that")


def playable(docs: list[Doc]) -> Playable:
    result = Playable(secrets=_secret_values(docs))
    config_maps = _config_maps(docs)
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in PLAYED:
            result.manifests.append(doc)
        elif kind in WORKLOADS:
            pod, claims = _pod(doc, result.secrets, config_maps)
            result.manifests += [*claims, pod]
            result.pods[name] = pod
        elif kind not in {"Secret", "Service"}:
            result.not_exercised.setdefault(kind, []).append(name)
    _check_services(docs, result.pods)
    # Services are not played: clients reach the pods by the same names.
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                and d["metadata"]["name"] not in result.pods]
    if services:
        result.not_exercised["Service (no pod of that name)"] = services
    return result
