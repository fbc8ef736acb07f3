"""helm/radreport rendered by a real Helm engine (Helm v4's Go SDK, embedded in the PyPI package
helm-python-sdk; no cluster needed) for every ci/ values file: `helm lint`, values.schema.json,
every manifest against the Kubernetes JSON schemas (kubernetes-validate, strict), and what the
deployment promises: non-root read-only containers with resources, Triton's GPU only in the GPU
values, the DICOM port reachable, bundled or external Redis/PostgreSQL, autoscaling on queue
depth, NetworkPolicies, and the chart's copies of deploy/observability's files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.queue import STAGE_QUEUES
from services.common.settings import CommonSettings
from services.dicom.settings import DicomSettings
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "radreport"
OBSERVABILITY = ROOT / "deploy" / "observability"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSION = "1.34.0"
RELEASE, NAMESPACE = "rr", "radiology"
# Custom resources: no Kubernetes schema for them; checked structurally below instead.
CRD_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1",
             "PrometheusRule": "monitoring.coreos.com/v1",
             "ScaledObject": "keda.sh/v1alpha1"}
WORKERS = dict(STAGE_QUEUES.items())  # stage -> queue; the service module is the queue's name
QUEUES = set(STAGE_QUEUES.values())
WORKLOADS = {"Deployment", "StatefulSet"}
# Variants rendered beside the ci/ files, on top of the chart defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "keda": {"keda.enabled": True},
    "existing-secret": {"existingSecret": "radreport-connections", "redis.enabled": False,
                        "postgresql.enabled": False},
    "triton-external": {"triton.enabled": False, "triton.externalUrl": "triton.ml:8001",
                        "dicom.service.type": "ClusterIP", "networkPolicy.enabled": True,
                        "imagePullSecrets": [{"name": "regcred"}]},
}


def helm_sdk() -> Any:
    try:
        import helm_python
    except ImportError:
        pytest.fail("helm-python-sdk is not installed: it comes with the dev extra; run "
                    "`make setup`")
    return helm_python


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as module
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: it comes with the dev extra; run "
                    "`make setup`")
    return module


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = values
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return values


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = helm_sdk()
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {path.stem.removesuffix("-values"): render(yaml.safe_load(path.read_text()))
           for path in CI_VALUES}
    out.update({name: render(nested(flat)) for name, flat in VARIANTS.items()})
    return out


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def by_component(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {component(d): d for d in of_kind(docs, kind).values()}


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container_named(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(workload) if c["name"] == name)


def test_ci_values_files_are_the_three_expected() -> None:
    assert [p.name for p in CI_VALUES] == ["cpu-values.yaml", "external-values.yaml",
                                           "gpu-values.yaml"]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint(values_file: Path) -> None:
    helm = helm_sdk()
    report = helm.lint(str(CHART), yaml.safe_load(values_file.read_text()), strict=True,
                       kube_version=f"v{KUBERNETES_VERSION}")
    assert report["total_charts_linted"] == 1
    assert not report["errors"], report["errors"]
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems, problems


def test_values_schema_accepts_the_values_and_rejects_typos() -> None:
    helm = helm_sdk()
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.schema is not None
        chart.validate_schema(None)
        for path in CI_VALUES:
            chart.validate_schema(yaml.safe_load(path.read_text()))
        for bad in ({"gateway": {"replicaz": 3}}, {"dicom": {"service": {"type": "Ingress"}}},
                    {"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0}},
                    {"externalDatabase": {"url": "mysql://db/radreport"}},
                    {"dicom": {"destinations": ["PACS-without-port"]}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a comment on the line above it (or on its own line);
    keys inside a list item belong to that item's comment."""
    undocumented = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    item_indent: int | None = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if item_indent is not None and indent > item_indent:
            continue
        item_indent = indent if stripped.startswith("- ") else None
        if not re.match(r"^(- )?[\w.-]+:", stripped):
            continue
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("#") and " # " not in line:
            undocumented.append(f"line {number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


def test_manifests_valid_against_kubernetes_schemas(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    kv = kubernetes_validate()
    failures = []
    for variant, docs in rendered.items():
        for doc in docs:
            where = f"{variant}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc["kind"] in CRD_KINDS:
                assert doc["apiVersion"] == CRD_KINDS[doc["kind"]], where
                continue
            failures += [f"{where}: null at {path}" for path in _nulls(doc)]
            try:
                kv.validate(doc, KUBERNETES_VERSION, strict=True)
            except kv.SchemaNotFoundError:
                failures.append(f"{where}: no schema (a CRD? list it in CRD_KINDS)")
            except kv.ValidationError as err:
                failures.append(f"{where}: {err.message} at {list(err.path)}")
    assert not failures, "\n".join(failures)


def _nulls(node: Any, path: str = "") -> list[str]:
    """Paths of null values: an empty template block, not something meant."""
    if node is None:
        return [path or "/"]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _nulls(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _nulls(v, f"{path}/{i}")]
    return []


def test_kubernetes_validation_is_not_vacuous() -> None:
    kv = kubernetes_validate()
    docs = render({})
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_common_labels(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, docs in rendered.items():
        for doc in docs:
            labels = doc["metadata"]["labels"]
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                        "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                        "helm.sh/chart"):
                assert key in labels, f"{variant}: {doc['kind']}/{doc['metadata']['name']}"
            assert labels["app.kubernetes.io/instance"] == RELEASE


def test_one_deployment_per_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("gpu", "cpu", "external"):
        deployments = by_component(rendered[variant], "Deployment")
        assert set(deployments) == {"gateway", "dicom", "triton",
                                    *(f"worker-{q}" for q in QUEUES)}, variant
        gateway = container_named(deployments["gateway"], "gateway")
        assert gateway["args"] == ["python", "-m", "services.gateway"]
        assert container_named(deployments["dicom"], "dicom")["args"] == [
            "python", "-m", "services.dicom"]
        for queue in QUEUES:
            args = container_named(deployments[f"worker-{queue}"], "worker")["args"]
            assert args[:3] == ["python", "-m", f"services.{queue}"]


def test_containers_are_non_root_read_only_and_bounded(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, docs in rendered.items():
        for doc in docs:
            if doc["kind"] not in WORKLOADS:
                continue
            where = f"{variant}: {doc['kind']}/{doc['metadata']['name']}"
            pod = doc["spec"]["template"]["spec"]
            pod_context = pod["securityContext"]
            assert pod_context["runAsNonRoot"] is True, where
            assert pod_context["runAsUser"] != 0, where
            assert pod_context["seccompProfile"]["type"] == "RuntimeDefault", where
            assert pod.get("automountServiceAccountToken") is False, where
            assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for container in containers(doc):
                name = f"{where} container {container['name']}"
                context = container["securityContext"]
                assert context["runAsNonRoot"] is True, name
                assert context.get("runAsUser", pod_context["runAsUser"]) != 0, name
                assert context["readOnlyRootFilesystem"] is True, name
                assert context["allowPrivilegeEscalation"] is False, name
                assert not context.get("privileged"), name
                assert context["capabilities"]["drop"] == ["ALL"], name
                assert "add" not in context["capabilities"], name
                assert context["seccompProfile"]["type"] == "RuntimeDefault", name
                resources = container["resources"]
                assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
                assert resources["limits"]["memory"], name
            main = pod["containers"][0]
            tmp = [m for m in main.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no writable /tmp"


def test_radreport_pods_share_the_blob_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    claim = next(iter(of_kind(docs, "PersistentVolumeClaim").values()))
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    config = next(d for d in of_kind(docs, "ConfigMap").values() if component_or(d) == "")
    data_dir = config["data"]["RADREPORT_DATA_DIR"]
    for name, deployment in by_component(docs, "Deployment").items():
        if name == "triton":
            continue
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"] == (
            claim["metadata"]["name"]), name
        env_from = pod["containers"][0]["envFrom"]
        assert env_from == [{"configMapRef": {"name": config["metadata"]["name"]}}], name
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["containers"][0]["env"]}
        assert set(env) == {"RADREPORT_DATABASE_URL", "RADREPORT_REDIS_URL"}, name


def component_or(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def test_configmap_settings_are_real_settings(rendered: dict[str, list[dict[str, Any]]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RADREPORT_* key of the ConfigMap is a setting a service reads, and the services'
    settings classes parse the values (the DICOM lists are JSON)."""
    known = {"RADREPORT_WORKER_METRICS_HOST", "RADREPORT_WORKER_METRICS_PORT"}
    for cls, prefix in ((CommonSettings, "RADREPORT_"), (GatewaySettings, "RADREPORT_GATEWAY_"),
                        (DicomSettings, "RADREPORT_DICOM_")):
        known |= {prefix + field.upper() for field in cls.model_fields}
    config = next(d for d in of_kind(rendered["gpu"], "ConfigMap").values()
                  if component_or(d) == "")
    data = config["data"]
    unknown = {k for k in data if k.startswith("RADREPORT_")} - known
    assert not unknown, unknown
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    dicom, gateway, common = DicomSettings(), GatewaySettings(), CommonSettings()
    assert dicom.host == "0.0.0.0" and dicom.metrics_host == "0.0.0.0"
    assert dicom.destinations == ["PACS@10.20.0.5:104"]
    assert dicom.allowed_calling_aets == ["PACS"]
    assert gateway.host == "0.0.0.0" and str(gateway.image_root) == "/data/images"
    assert common.environment == "production" and str(common.blobs) == "/data/blobs"
    assert common.triton_url == f"{RELEASE}-radreport-triton:8001"
    assert data["RADREPORT_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_probes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("gpu", "cpu"):
        deployments = by_component(rendered[variant], "Deployment")
        gateway = container_named(deployments["gateway"], "gateway")
        assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
        dicom = container_named(deployments["dicom"], "dicom")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert dicom[probe]["tcpSocket"]["port"] == "dicom", probe
        triton = container_named(deployments["triton"], "triton")
        assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        startup = triton["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, variant
        for queue in QUEUES:
            worker = container_named(deployments[f"worker-{queue}"], "worker")
            assert worker["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    gpu_startup = container_named(by_component(rendered["gpu"], "Deployment")["triton"],
                                  "triton")["startupProbe"]
    assert gpu_startup["periodSeconds"] * gpu_startup["failureThreshold"] >= 900


def _gpu_requests(docs: list[dict[str, Any]]) -> list[str]:
    found = []
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for container in containers(doc):
                for part in ("requests", "limits"):
                    if "nvidia.com/gpu" in container["resources"].get(part, {}):
                        found.append(f"{doc['metadata']['name']}/{container['name']}")
    return found


def test_triton_gets_a_gpu_only_with_gpu_values(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu = by_component(rendered["gpu"], "Deployment")["triton"]
    triton = container_named(gpu, "triton")
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert set(_gpu_requests(rendered["gpu"])) == {gpu["metadata"]["name"] + "/triton"}
    models = next(v for v in gpu["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "radreport-trt-repository"
    assert "--model-repository=/models" in triton["args"]
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["PYTHONPATH"].split(":")[0] == "/opt/radreport/python"  # from the init container
    assert container_named(gpu, "radreport-python")["image"].endswith("/radreport:0.1.0")

    cpu = by_component(rendered["cpu"], "Deployment")["triton"]
    assert _gpu_requests(rendered["cpu"]) == []
    triton = container_named(cpu, "triton")
    assert triton["image"].endswith("/radreport-triton-cpu:0.1.0")
    assert "command" not in triton  # the image's ENTRYPOINT sets the backend directory
    assert "PYTHONPATH" not in {e["name"] for e in triton["env"]}
    assert "initContainers" not in cpu["spec"]["template"]["spec"]
    assert cpu["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert "models" not in {v["name"] for v in cpu["spec"]["template"]["spec"]["volumes"]}


def test_dicom_port_reaches_pacs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    expectations = {"gpu": "LoadBalancer", "cpu": "NodePort", "triton-external": "ClusterIP"}
    for variant, service_type in expectations.items():
        docs = rendered[variant]
        dicom = container_named(by_component(docs, "Deployment")["dicom"], "dicom")
        assert {"name": "dicom", "containerPort": 11112, "protocol": "TCP"} in dicom["ports"]
        services = [s for s in of_kind(docs, "Service").values()
                    if any(p["name"] == "dicom" for p in s["spec"]["ports"])]
        assert len(services) == 1, variant
        spec = services[0]["spec"]
        assert spec["type"] == service_type, variant
        port = next(p for p in spec["ports"] if p["name"] == "dicom")
        assert port["port"] == 11112 and port["targetPort"] == "dicom"
        if service_type != "ClusterIP":
            assert spec["externalTrafficPolicy"] == "Local"  # allowed_hosts sees PACS' address
    cpu_port = next(s for s in of_kind(rendered["cpu"], "Service").values()
                    if s["spec"]["type"] == "NodePort")["spec"]["ports"][0]
    assert cpu_port["nodePort"] == 31112
    gpu_service = next(s for s in of_kind(rendered["gpu"], "Service").values()
                       if s["spec"]["type"] == "LoadBalancer")
    assert gpu_service["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16"]
    gateway = by_component(rendered["gpu"], "Service")["gateway"]
    assert gateway["spec"]["type"] == "ClusterIP"


def test_bundled_or_external_redis_and_postgresql(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("gpu", "cpu", "defaults"):
        statefulsets = by_component(rendered[variant], "StatefulSet")
        assert set(statefulsets) == {"redis", "postgresql"}, variant
        redis = container_named(statefulsets["redis"], "redis")
        assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
        assert "$(REDIS_PASSWORD)" in redis["args"]
    for variant in ("external", "existing-secret"):
        assert of_kind(rendered[variant], "StatefulSet") == {}, variant
        components = {component_or(d) for d in rendered[variant]}
        assert not components & {"redis", "postgresql"}, variant

    external = yaml.safe_load((CHART / "ci" / "external-values.yaml").read_text())
    secret = next(iter(of_kind(rendered["external"], "Secret").values()))
    import base64
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"database-url": external["externalDatabase"]["url"],
                    "redis-url": external["externalRedis"]["url"]}

    bundled = next(iter(of_kind(rendered["gpu"], "Secret").values()))
    data = {k: base64.b64decode(v).decode() for k, v in bundled["data"].items()}
    password = data["postgresql-password"]
    assert len(password) == 32
    assert data["database-url"] == (
        f"postgresql+psycopg://radreport:{password}@{RELEASE}-radreport-postgresql:5432/radreport")
    assert data["redis-url"].startswith("redis://:") and data["redis-url"].endswith(
        f"@{RELEASE}-radreport-redis:6379/0")


def test_existing_secret_replaces_the_charts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["existing-secret"]
    assert of_kind(docs, "Secret") == {}
    for deployment in by_component(docs, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "radreport-connections"


def test_workers_autoscale_on_their_queue_depth(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("gpu", "cpu", "external"):
        docs = rendered[variant]
        deployments = of_kind(docs, "Deployment")
        hpas = of_kind(docs, "HorizontalPodAutoscaler")
        queues = set()
        for hpa in hpas.values():
            assert hpa["apiVersion"] == "autoscaling/v2"
            target = hpa["spec"]["scaleTargetRef"]
            assert target["kind"] == "Deployment" and target["name"] in deployments
            assert "replicas" not in deployments[target["name"]]["spec"], "HPA owns replicas"
            (metric,) = hpa["spec"]["metrics"]
            assert metric["type"] == "External"
            assert metric["external"]["metric"]["name"] == "radreport_queue_depth"
            queue = metric["external"]["metric"]["selector"]["matchLabels"]["queue"]
            assert component(deployments[target["name"]]) == f"worker-{queue}"
            assert metric["external"]["target"]["type"] == "AverageValue"
            queues.add(queue)
        assert queues == QUEUES, variant
    assert of_kind(rendered["keda"], "HorizontalPodAutoscaler") == {}


def test_keda_scaled_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["keda"]
    deployments = of_kind(docs, "Deployment")
    objects = of_kind(docs, "ScaledObject")
    queues = set()
    for scaled in objects.values():
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        match = re.fullmatch(r'max\(radreport_queue_depth\{queue="(\w+)"\}\)',
                             trigger["metadata"]["query"])
        assert match, trigger["metadata"]["query"]
        assert float(trigger["metadata"]["threshold"]) > 0
        assert trigger["metadata"]["serverAddress"].startswith("http")
        assert component(deployments[spec["scaleTargetRef"]["name"]]) == f"worker-{match[1]}"
        queues.add(match[1])
    assert queues == QUEUES


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
    return True


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant in ("gpu", "cpu", "external", "triton-external"):
        docs = rendered[variant]
        policies = of_kind(docs, "NetworkPolicy")
        deny = policies[f"{RELEASE}-radreport-default-deny"]["spec"]
        assert deny["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in deny and "egress" not in deny
        pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
                for d in docs if d["kind"] in WORKLOADS}
        for name, labels in pods.items():
            assert _selects(deny["podSelector"], labels), f"{variant}: {name} not denied"

        def ingress_ports(target: dict[str, str],
                          policies: dict[str, dict[str, Any]] = policies) -> set[int]:
            """Ports some policy lets in to the pod with these labels."""
            ports = set()
            for policy in policies.values():
                if _selects(policy["spec"]["podSelector"], target):
                    for rule in policy["spec"].get("ingress", []):
                        ports |= {p["port"] for p in rule.get("ports", [])}
            return ports

        labels = {component_or(d): d["spec"]["template"]["metadata"]["labels"]
                  for d in docs if d["kind"] in WORKLOADS}
        assert ingress_ports(labels["gateway"]) == {8080, 50051}, variant  # REST, gRPC
        assert ingress_ports(labels["dicom"]) == {11112, 9102}, variant
        for queue in QUEUES:
            assert ingress_ports(labels[f"worker-{queue}"]) == {9100}, variant
        if "triton" in labels:
            assert ingress_ports(labels["triton"]) == {8000, 8001, 8002}, variant
        if "redis" in labels:
            redis = policies[f"{RELEASE}-radreport-redis"]["spec"]["ingress"][0]
            (peer,) = redis["from"]
            assert peer["podSelector"]["matchLabels"]["radreport.io/tier"] == "app"
            assert not _selects(peer["podSelector"], labels["postgresql"])
    gpu = of_kind(rendered["gpu"], "NetworkPolicy")[f"{RELEASE}-radreport-dicom"]["spec"]
    assert gpu["ingress"][0]["from"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert gpu["egress"][0]["ports"] == [{"port": 104, "protocol": "TCP"}]
    external = of_kind(rendered["external"], "NetworkPolicy")[f"{RELEASE}-radreport-app-egress"]
    ports = {p["port"] for rule in external["spec"]["egress"] for p in rule["ports"]}
    assert ports == {6380, 5432}
    outside = of_kind(rendered["triton-external"], "NetworkPolicy")
    ports = {p["port"] for rule in outside[f"{RELEASE}-radreport-app-egress"]["spec"]["egress"]
             for p in rule["ports"]}
    assert ports == {6379, 5432, 8001}  # bundled Redis, PostgreSQL; Triton at triton.ml:8001
    assert "egress" not in outside[f"{RELEASE}-radreport-gateway"]["spec"]


def _prometheus_jobs() -> set[str]:
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def test_service_monitors_scrape_the_jobs_of_prometheus_yml(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    services = of_kind(docs, "Service").values()
    jobs = set()
    for monitor in of_kind(docs, "ServiceMonitor").values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert spec["jobLabel"] == "radreport.io/job"
        selected = [s for s in services if _selects(spec["selector"], s["metadata"]["labels"])]
        assert selected, f"{monitor['metadata']['name']} selects no Service"
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            jobs.add(service["metadata"]["labels"]["radreport.io/job"])
        assert len({s["metadata"]["labels"]["radreport.io/job"] for s in selected}) == 1
    assert jobs == _prometheus_jobs()
    assert of_kind(rendered["cpu"], "ServiceMonitor") == {}


def test_prometheus_rule_carries_the_alert_rules(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    (rule,) = of_kind(rendered["gpu"], "PrometheusRule").values()
    alerts = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert rule["spec"] == {"groups": alerts["groups"]}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for entry in group["rules"]:
            assert entry["alert"] and entry["expr"] and entry["labels"]["severity"]
    assert of_kind(rendered["cpu"], "PrometheusRule") == {}


def test_dashboards_as_configmaps(rendered: dict[str, list[dict[str, Any]]]) -> None:
    files = {p.name: p.read_text() for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert files, "no dashboards in the chart"
    found = {}
    for config in of_kind(rendered["gpu"], "ConfigMap").values():
        if config["metadata"]["labels"].get("grafana_dashboard") == "1":
            (name, text), = config["data"].items()
            json.loads(text)
            found[name] = text
    assert found == files
    assert not any(c["metadata"]["labels"].get("grafana_dashboard")
                   for c in of_kind(rendered["cpu"], "ConfigMap").values())


def test_chart_files_are_copies_of_deploy_observability() -> None:
    """Helm reads files inside the chart only: files/ holds copies (see files/README.md)."""
    pairs = {CHART / "files" / "alerts.yml": OBSERVABILITY / "prometheus" / "alerts.yml"}
    chart_dashboards = CHART / "files" / "dashboards"
    canonical_dashboards = OBSERVABILITY / "grafana" / "dashboards"
    names = {p.name for p in chart_dashboards.glob("*.json")} | {
        p.name for p in canonical_dashboards.glob("*.json")}
    pairs.update({chart_dashboards / n: canonical_dashboards / n for n in names})
    stale = [f"{copy.relative_to(ROOT)} != {source.relative_to(ROOT)}"
             for copy, source in sorted(pairs.items())
             if not copy.is_file() or not source.is_file()
             or copy.read_bytes() != source.read_bytes()]
    assert not stale, ("chart copies differ from deploy/observability; run:\n"
                       "  cp deploy/observability/prometheus/alerts.yml helm/radreport/files/\n"
                       "  cp deploy/observability/grafana/dashboards/*.json "
                       "helm/radreport/files/dashboards/\n" + "\n".join(stale))


def test_the_cpu_values_are_playable_by_podman(tmp_path: Path) -> None:
    """What `radreport bench kube` (make containers) plays: every workload as a pod named
    after its Service, secrets expanded, and nothing but cluster-only kinds left out."""
    from radreport.bench.kube import render
    from radreport.bench.kube_manifests import playable

    plan = playable(render(), tmp_path)
    assert {p.removeprefix("rr-radreport-") for p in plan.pods} == {
        "gateway", "dicom", "triton", "redis", "postgresql", "worker-preprocess",
        "worker-inference", "worker-grounding", "worker-fhir"}
    assert "$(" not in str(plan.pods["rr-radreport-redis"]["spec"]["containers"][0]["args"])
    assert set(plan.not_exercised) <= {"NetworkPolicy", "HorizontalPodAutoscaler",
                                       "ServiceAccount", "Service (no pod of that name)"}
