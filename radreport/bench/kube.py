"""``radreport bench kube``: the Helm chart, rendered with its CPU values, run by podman.

The chart is rendered by Helm's own engine (helm-python-sdk) with helm/radreport/ci/cpu-values.yaml
and the locally built images, made playable (radreport.bench.kube_manifests) and played with
``podman kube play`` on a network of its own. podman runs no readiness probes, so this plays the
kubelet's part: every container's readinessProbe (httpGet and tcpSocket against the pod's address,
exec inside the container) must pass. Then the smoke test runs against the pods' addresses, the
pods are taken down and played again, and the signed report must still be there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from radreport import __version__
from radreport.bench.kube_manifests import Doc, Playable, playable
from radreport.bench.podman import ROOT, described, exists, logs_tail, podman, podman_env
from radreport.bench.smoke import REST_REPEATS, Endpoints, run_smoke, signed_report

CHART = ROOT / "helm" / "radreport"
RELEASE, NETWORK = "rr", "radreport-kube"
LOCAL_IMAGES = {
    "image": {"repository": "localhost/radreport", "tag": __version__},
    "triton": {"image": {"repository": "localhost/radreport-triton-cpu", "tag": __version__}},
    "redis": {"image": {"repository": "localhost/radreport-redis", "tag": "bookworm"}},
    "postgresql": {"image": {"repository": "localhost/radreport-postgres", "tag": "bookworm"}},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def render() -> list[Doc]:
    import helm_python

    values = _merge(yaml.safe_load((CHART / "ci" / "cpu-values.yaml").read_text()), LOCAL_IMAGES)
    with helm_python.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="radiology")
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def _container_name(pod: str, container: str) -> str:
    return f"{pod}-{container}"  # podman's name for a container of a played Pod


def pod_address(pod: str) -> str:
    infra = json.loads(podman("pod", "inspect", pod))
    infra = infra[0] if isinstance(infra, list) else infra
    networks = json.loads(podman("inspect", infra["InfraContainerID"]))[0][
        "NetworkSettings"]["Networks"]
    return str(networks[NETWORK]["IPAddress"])


def _probe(pod: str, container: Doc, address: str) -> bool:
    """One readiness probe, as the kubelet runs it; True without a probe once running."""
    probe = container.get("readinessProbe")
    name = _container_name(pod, container["name"])
    if [c.state for c in described([name])] != ["running"]:
        return False
    if not probe:
        return True
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{address}:{ports.get(get['port'], get['port'])}{get.get('path', '/')}"
        try:
            return 200 <= httpx.get(url, timeout=timeout).status_code < 400
        except httpx.HTTPError:
            return False
    if "tcpSocket" in probe:
        port = probe["tcpSocket"]["port"]
        try:
            socket.create_connection((address, int(ports.get(port, port))), timeout).close()
            return True
        except OSError:
            return False
    command = probe["exec"]["command"]
    return subprocess.run(["podman", "exec", name, *command], capture_output=True,
                          env=podman_env(), timeout=timeout + 30).returncode == 0


def security(plan: Playable) -> str:
    """How the played containers run: their users, and read-only root file systems."""
    found = described([_container_name(pod, c["name"]) for pod, manifest in plan.pods.items()
                       for c in manifest["spec"]["containers"]])
    users = sorted({c.user for c in found})
    read_only = sum(c.read_only for c in found)
    return (f"{len(found)} containers as users {', '.join(users)}; read-only root file system "
            f"on {read_only} of {len(found)}")


def wait_ready(plan: Playable, timeout_s: float) -> float:
    start = time.monotonic()
    while True:
        waiting = []
        for pod, manifest in plan.pods.items():
            try:
                address = pod_address(pod)
            except (RuntimeError, KeyError):
                waiting.append(pod)
                continue
            if not all(_probe(pod, c, address) for c in manifest["spec"]["containers"]):
                waiting.append(pod)
        if not waiting:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            tails = "\n".join(f"--- {p}\n{logs_tail(_container_name(p, c['name']))}"
                              for p in waiting[:3] for c in plan.pods[p]["spec"]["containers"])
            raise RuntimeError(f"not ready after {timeout_s:.0f} s: {waiting}\n{tails}")
        time.sleep(3)


class KubeStack:
    def __init__(self, plan: Playable, folder: Path) -> None:
        self.plan, self.file = plan, folder / "manifests.yaml"

    def _write_manifests(self) -> None:
        """The plan, less the claims whose volumes exist: a claim outlives its pods, and
        podman refuses to make a volume twice."""
        kept = [m for m in self.plan.manifests if m["kind"] != "PersistentVolumeClaim"
                or not exists("volume", m["metadata"]["name"])]
        self.file.write_text(yaml.safe_dump_all(kept))

    def create(self) -> None:
        if not exists("network", NETWORK):
            podman("network", "create", NETWORK)
        for name, data in self.plan.secrets.items():
            podman("secret", "rm", name, check=False)
            subprocess.run(["podman", "secret", "create", name, "-"], input=json.dumps(data),
                           text=True, check=True, capture_output=True, env=podman_env())

    def play(self, timeout_s: float) -> float:
        """Seconds from `kube play` until every pod is ready."""
        for folder, group in self.plan.empty_dirs.items():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            os.chown(folder, 0, group if group is not None else 0)
            folder.chmod(0o777 | (stat.S_ISGID if group is not None else 0))
        self._write_manifests()
        start = time.monotonic()
        podman("kube", "play", "--network", NETWORK, str(self.file))
        wait_ready(self.plan, timeout_s - (time.monotonic() - start))
        return time.monotonic() - start

    def down(self) -> None:
        if self.file.is_file():
            podman("kube", "down", str(self.file), check=False)

    def destroy(self) -> None:
        """Everything of the release gone, a crashed earlier run's too: pods, claims,
        secrets, the network, the emptyDir folders."""
        self.file.write_text(yaml.safe_dump_all(self.plan.manifests))
        self.down()
        for manifest in self.plan.manifests:
            if manifest["kind"] == "PersistentVolumeClaim":
                podman("volume", "rm", "-f", manifest["metadata"]["name"], check=False)
        for name in self.plan.secrets:
            podman("secret", "rm", name, check=False)
        podman("network", "rm", "-f", NETWORK, check=False)
        for folder in {f.parent.parent for f in self.plan.empty_dirs}:
            shutil.rmtree(folder, ignore_errors=True)

    def endpoints(self) -> Endpoints:
        gateway = pod_address(f"{RELEASE}-radreport-gateway")
        dicom = pod_address(f"{RELEASE}-radreport-dicom")
        return Endpoints(f"http://{gateway}:8080", dicom, 11112, prometheus_url=None)

    def token(self, role: str) -> str:
        gateway = _container_name(f"{RELEASE}-radreport-gateway", "gateway")
        return podman("exec", gateway, "radreport", "token", "--role", role, "--ttl",
                      "3600").strip()


def run(timeout_s: float = 900, keep: bool = False) -> Iterator[str]:
    scratch = Path(tempfile.mkdtemp(prefix="radreport-kube-"))
    plan = playable(render(), scratch)
    yield ("kube: played " + ", ".join(sorted(plan.pods)) + "; not exercised: "
           + "; ".join(f"{k} ({len(v)})" for k, v in sorted(plan.not_exercised.items())))
    with tempfile.TemporaryDirectory() as tmp:
        stack = KubeStack(plan, Path(tmp))
        stack.destroy()
        scratch.mkdir(exist_ok=True)
        stack.create()
        try:
            ready_s = stack.play(timeout_s)
            yield f"kube: {len(plan.pods)} pods ready (readiness probes passing) in {ready_s:.0f} s"
            yield f"kube: {security(plan)}"
            smoke = run_smoke(stack.endpoints(), stack.token)
            yield (f"smoke: REST study reported in {smoke.rest_seconds:.1f} s (the next "
                   f"{REST_REPEATS}: p50 {smoke.rest_p50_seconds:.2f} s), DICOM study in "
                   f"{smoke.dicom_seconds:.1f} s; grounded sentences {smoke.grounded_sentences}; "
                   "one report signed; reached at the pods' addresses (the DICOM NodePort and "
                   "Services' cluster IPs not exercised); no Prometheus (the chart's "
                   "ServiceMonitor is for a cluster's operator)")
            stack.down()
            again_s = stack.play(timeout_s)
            signed_by = signed_report(stack.endpoints(), stack.token, smoke.signed_report_id)
            yield (f"kube: taken down and played again, ready in {again_s:.0f} s; the signed "
                   f"report is still signed (by {signed_by})")
        finally:
            if not keep:
                stack.destroy()
