"""radreport.bench.kube_manifests: the chart's manifests made playable by podman kube play, each
change as the control plane or the kubelet would make it (the run itself: `radreport bench
kube`, in `make containers`)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from radreport.bench.kube_manifests import playable

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
          "data": {"password": base64.b64encode(b"s3cret").decode()}}


def statefulset(port: int = 6379, service_port: int = 6379) -> list[dict[str, Any]]:
    return [SECRET, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "cache"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "cache"}},
                "spec": {
                    "securityContext": {"runAsUser": 999, "runAsGroup": 1000, "fsGroup": 1000},
                    "containers": [{
                        "name": "redis", "image": "redis",
                        "args": ["redis-server", "--requirepass", "$(PASSWORD)", "$(UNKNOWN)"],
                        "env": [{"name": "PASSWORD", "valueFrom": {
                            "secretKeyRef": {"name": "creds", "key": "password"}}}],
                        "ports": [{"name": "redis", "containerPort": port}],
                        "securityContext": {"runAsGroup": 5}}],
                    "volumes": [{"name": "tmp", "emptyDir": {}},
                                {"name": "shm", "emptyDir": {"medium": "Memory"}}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                                      "spec": {"accessModes": ["ReadWriteOnce"]}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cache"},
         "spec": {"selector": {"app": "cache"},
                  "ports": [{"port": service_port, "targetPort": "redis"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "deny"}, "spec": {}}]


def test_a_statefulset_is_played_as_its_pod_named_after_it(tmp_path: Path) -> None:
    plan = playable(statefulset(), tmp_path)
    pod = plan.pods["cache"]
    container = pod["spec"]["containers"][0]
    # $(VAR) expanded from the environment, as the kubelet does; unknown ones left alone
    assert container["args"] == ["redis-server", "--requirepass", "s3cret", "$(UNKNOWN)"]
    # the pod's user applies where the container sets none; the container's own wins
    assert container["securityContext"] == {"runAsGroup": 5, "runAsUser": 999}
    claims = [m for m in plan.manifests if m["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["data-cache-0"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-cache-0"}} in (
        pod["spec"]["volumes"])
    # podman's secretKeyRef reads a JSON map of base64 values
    assert plan.secrets == {"creds": SECRET["data"]}
    assert plan.not_exercised == {"NetworkPolicy": ["deny"]}


def test_empty_dirs_become_folders_owned_by_the_fs_group(tmp_path: Path) -> None:
    plan = playable(statefulset(), tmp_path)
    volumes = {v["name"]: v for v in plan.pods["cache"]["spec"]["volumes"]}
    tmp = Path(volumes["tmp"]["hostPath"]["path"])
    shm = Path(volumes["shm"]["hostPath"]["path"])
    assert tmp.is_relative_to(tmp_path) and shm.is_relative_to("/dev/shm")
    assert plan.empty_dirs == {tmp: 1000, shm: 1000}
    assert not any("emptyDir" in v for v in volumes.values())


def test_container_ports_are_not_published_by_podman(tmp_path: Path) -> None:
    plan = playable(statefulset(), tmp_path)
    played = next(m for m in plan.manifests if m["kind"] == "Pod")
    assert "ports" not in played["spec"]["containers"][0]
    assert plan.pods["cache"]["spec"]["containers"][0]["ports"]  # kept for the probes


def test_a_service_that_remaps_its_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differs from the pod's port"):
        playable(statefulset(port=6380, service_port=6379), tmp_path)
