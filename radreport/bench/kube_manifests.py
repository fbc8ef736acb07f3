"""The Helm chart's manifests made playable by ``podman kube play`` (podman 4.3).

podman plays Pods, Deployments, PersistentVolumeClaims and ConfigMaps. What a cluster adds is
done here, each step as the control plane or the kubelet would do it:
- a Deployment or StatefulSet is played as its pod template (one replica), named after the
  workload. The chart names each Service after its workload, so the Services' names resolve
  through podman's DNS; a Service whose port is not its pod's port cannot be emulated that
  way and is refused;
- a StatefulSet's volumeClaimTemplates become PersistentVolumeClaims (`data-NAME-0`);
- an emptyDir becomes a fresh host folder, world-writable and owned by the pod's fsGroup, as
  the kubelet makes it (podman's own is root's and 0755; memory-backed ones under /dev/shm);
- a Secret becomes a podman secret in the form podman's secretKeyRef reads (a JSON map of
  base64 values);
- `$(VAR)` in command and args is expanded from the container's environment;
- the pod's runAsUser/runAsGroup apply to each container that sets none;
- containerPorts are left out of what podman plays: podman 4.3 would publish each on the
  host (where they collide with the machine's own PostgreSQL and Redis); clients use the pods'
  addresses, as they would inside a cluster.
Everything else is listed as not exercised.
"""

from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAYED = {"ConfigMap", "PersistentVolumeClaim"}
WORKLOADS = {"Deployment", "StatefulSet"}
Doc = dict[str, Any]


@dataclass
class Playable:
    manifests: list[Doc] = field(default_factory=list)  # what `podman kube play` gets
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> base64
    pods: dict[str, Doc] = field(default_factory=dict)  # pod name -> pod spec
    # emptyDir folders to make before each play: path -> the pod's fsGroup (or None)
    empty_dirs: dict[Path, int | None] = field(default_factory=dict)
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


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]


def _empty_dirs(name: str, spec: Doc, scratch: Path) -> dict[Path, int | None]:
    """Each emptyDir as a hostPath folder the caller makes world-writable and owned by the
    pod's fsGroup, as the kubelet makes an emptyDir (podman's is root's, 0755)."""
    made: dict[Path, int | None] = {}
    for volume in spec.get("volumes", []):
        if "emptyDir" not in volume:
            continue
        memory = (volume["emptyDir"] or {}).get("medium") == "Memory"
        folder = (Path("/dev/shm") / scratch.name if memory else scratch) / name / volume["name"]
        made[folder] = (spec.get("securityContext") or {}).get("fsGroup")
        volume.pop("emptyDir")
        volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    return made


def _pod(workload: Doc, secrets: dict[str, dict[str, str]],
         config_maps: dict[str, dict[str, str]], scratch: Path,
         ) -> tuple[Doc, list[Doc], dict[Path, int | None]]:
    """The workload's pod template as a Pod named after it, the claims and the emptyDir
    folders it needs."""
    name = workload["metadata"]["name"]
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    empty_dirs = _empty_dirs(name, spec, scratch)
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
    return pod, claims, empty_dirs


def _unpublished(pod: Doc) -> Doc:
    """The pod without containerPorts, which podman 4.3 publishes on the host (in Kubernetes
    they are informational: a container listens on its ports regardless)."""
    played = copy.deepcopy(pod)
    for container in played["spec"].get("initContainers", []) + played["spec"]["containers"]:
        container.pop("ports", None)
    return played


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


def playable(docs: list[Doc], scratch: Path) -> Playable:
    """What ``podman kube play`` can run; emptyDir folders go under ``scratch``."""
    result = Playable(secrets=_secret_values(docs))
    config_maps = _config_maps(docs)
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in PLAYED:
            result.manifests.append(doc)
        elif kind in WORKLOADS:
            pod, claims, empty_dirs = _pod(doc, result.secrets, config_maps, scratch)
            result.manifests += [*claims, _unpublished(pod)]
            result.pods[name] = pod
            result.empty_dirs.update(empty_dirs)
        elif kind not in {"Secret", "Service"}:
            result.not_exercised.setdefault(kind, []).append(name)
    _check_services(docs, result.pods)
    # Services are not played: clients reach the pods by the same names.
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                and d["metadata"]["name"] not in result.pods]
    if services:
        result.not_exercised["Service (no pod of that name)"] = services
    return result
