"""docker-compose.yml is a valid Compose file (the Compose Specification's own JSON schema) and
deploys what the design needs: health checks everywhere, dependencies on health, Triton on a
GPU with a CPU profile instead, Redis with AOF, secrets from files, the observability files of
deploy/observability mounted where their configs expect them. No Docker engine is needed."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.queue import STAGE_QUEUES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")  # provenance: compose-spec.md
COMPOSE_SPEC_SHA256 = "89f4bdc4ba651ff024118917a7cdb67d9d78c1af4bab9b12ec2fc85f5b7d90d3"
OBSERVABILITY = ROOT / "deploy" / "observability"
WORKERS = {f"worker-{queue}": queue for queue in STAGE_QUEUES.values()}
APP_SERVICES = {"gateway", "dicom", *WORKERS}
TRITONS = {"triton", "triton-cpu"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default}, with no variable set: the default (or empty)."""
    def default(match: re.Match[str]) -> str:
        body = match.group(0)[2:-1]
        for separator in (":-", "-"):
            if separator in body:
                return body.split(separator, 1)[1]
        return ""
    return INTERPOLATION.sub(default, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())  # YAML merge keys (<<) resolved here
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, please"
    return {k: interpolate(str(v)) for k, v in env.items()}


def test_vendored_schema_is_the_recorded_one() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == COMPOSE_SPEC_SHA256, "compose-spec.json changed: update compose-spec.md"


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects(compose: dict[str, Any]) -> None:
    """The validator is not vacuous: an unknown key and a bad condition are errors."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["healthchek"] = {"test": ["CMD", "true"]}
    broken["services"]["dicom"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_service_of_the_design_is_there(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "postgres", *TRITONS, *APP_SERVICES, "prometheus",
                             "grafana"}
    for name, queue in WORKERS.items():
        module = f"services.{queue}"
        assert services[name]["command"] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None
    assert services["gateway"]["command"] == ["python", "-m", "services.gateway"]
    assert services["dicom"]["command"] == ["python", "-m", "services.dicom"]


def test_every_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1, name
    for name in APP_SERVICES:  # the runtime image's own check, told which service it is
        test = services[name]["healthcheck"]["test"]
        expected = name.removeprefix("worker-")
        assert test == ["CMD", "python", "/opt/radreport/healthcheck.py", expected], name


def test_dependencies_wait_for_health(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert rule["condition"] == "service_healthy", f"{name} -> {target}"
            assert "healthcheck" in services[target]
    for name in APP_SERVICES:
        assert {"redis", "postgres"} <= set(services[name]["depends_on"]), name
    for name in WORKERS:  # the schema is migrated by the gateway at its start
        assert "gateway" in services[name]["depends_on"], name


def test_triton_on_a_gpu_and_a_cpu_profile_instead(services: dict[str, Any]) -> None:
    gpu, cpu = services["triton"], services["triton-cpu"]
    assert gpu["image"].startswith("${RADREPORT_TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               and d.get("count", 0) >= 1 for d in devices)
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "deploy/docker/triton-cpu.Dockerfile"
    assert (ROOT / cpu["build"]["dockerfile"]).is_file()
    assert "deploy" not in cpu
    for service in (gpu, cpu):  # either one answers as `triton`
        assert "triton" in service["networks"]["backend"]["aliases"]
    # Only one profile's Triton exists at a time: who waits for it must not require both.
    for name, service in services.items():
        depends = service.get("depends_on", {})
        tritons = TRITONS & set(depends)
        assert tritons in (set(), TRITONS), f"{name} waits for one Triton only"
        for triton in tritons:
            assert depends[triton]["required"] is False, name
    for name in ("gateway", "worker-inference"):
        assert set(services[name]["depends_on"]) >= TRITONS, name
    for name in APP_SERVICES:
        assert env_of(services[name])["RADREPORT_TRITON_URL"] == "triton:8001"


def test_nothing_privileged(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), name
        assert service.get("network_mode") != "host", name
        assert service.get("pid") != "host", name
        for volume in service.get("volumes", []):
            assert "docker.sock" not in str(volume), name
    for name in APP_SERVICES | TRITONS:
        service = services[name]
        assert str(service["user"]).split(":")[0] not in {"0", "root"}, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    for name in APP_SERVICES | {"triton-cpu"}:
        assert services[name]["read_only"] is True and "/tmp" in services[name]["tmpfs"], name


def test_redis_appends_to_a_volume_and_postgres_keeps_its_data(
        compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert {"redis-data", "postgres-data", "blobs"} <= set(compose["volumes"])
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("redis", "postgres", "triton", "triton-cpu"):
        assert "ports" not in services[name], f"{name} must not be published"


def test_one_blob_volume_shared_by_every_radreport_service(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = env_of(services[name])
        assert "blobs:/data" in services[name]["volumes"], name
        assert env["RADREPORT_DATA_DIR"] == "/data"
        assert env["RADREPORT_BLOB_ROOT"] == "/data/blobs"
        assert env["RADREPORT_ENVIRONMENT"] == "production"
        assert env["RADREPORT_REDIS_URL"] == "redis://redis:6379/0"


def test_secrets_come_from_files_never_from_this_file(
        compose: dict[str, Any], services: dict[str, Any]) -> None:
    secret_like = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL", re.IGNORECASE)
    for name, service in services.items():
        for key, value in env_of(service).items():
            if secret_like.search(key):
                assert key.endswith(("_FILE", "__FILE")), f"{name}: {key} given in clear"
                assert value.startswith("/run/secrets/"), f"{name}: {key}"
                assert Path(value).name in {s if isinstance(s, str) else s["source"]
                                            for s in service.get("secrets", [])}, key
    script = (ROOT / "deploy" / "compose" / "make-secrets.sh").read_text()
    for name, secret in compose["secrets"].items():
        path = interpolate(secret["file"])
        assert path.startswith("./var/secrets/"), f"{name}: secrets live in git-ignored var/"
        assert f"write {name} " in script, f"make-secrets.sh does not write {name}"
    assert "/var/" in (ROOT / ".gitignore").read_text().splitlines()
    assert env_of(services["postgres"])["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password")
    for name in APP_SERVICES:
        assert env_of(services[name])["RADREPORT_DATABASE_URL_FILE"] == (
            "/run/secrets/database_url")


def test_ports_services_listen_on(services: dict[str, Any]) -> None:
    gateway, dicom = env_of(services["gateway"]), env_of(services["dicom"])
    assert gateway["RADREPORT_GATEWAY_HOST"] == "0.0.0.0"
    assert interpolate(services["gateway"]["ports"][0]) == "8080:8080"
    assert dicom["RADREPORT_DICOM_HOST"] == "0.0.0.0"
    assert dicom["RADREPORT_DICOM_METRICS_HOST"] == "0.0.0.0"
    assert interpolate(services["dicom"]["ports"][0]) == "11112:11112"
    assert json.loads(dicom["RADREPORT_DICOM_DESTINATIONS"]) == []
    for name in WORKERS:
        env = env_of(services[name])
        assert env["RADREPORT_WORKER_METRICS_HOST"] == "0.0.0.0", name
    for name in ("prometheus", "grafana"):
        assert all(interpolate(p).startswith("127.0.0.1:") for p in services[name]["ports"])


def test_every_published_port_can_be_moved(services: dict[str, Any]) -> None:
    """Each host side comes from a RADREPORT_*_PUBLISH variable (with the documented default),
    so a second stack, or one beside the machine's own services, can run on free ports
    (`radreport bench compose` does)."""
    for name, service in services.items():
        for port in service.get("ports", []):
            host_side = str(port).rsplit(":", 1)[0]
            assert re.fullmatch(r"\$\{RADREPORT_[A-Z_]+_PUBLISH:-[0-9.:]+\}", host_side), (
                name, port)


def _metrics_port(service_name: str, service: dict[str, Any]) -> int:
    env = env_of(service)
    if service_name == "gateway":
        return int(env["RADREPORT_GATEWAY_PORT"])
    if service_name == "dicom":
        return int(env["RADREPORT_DICOM_METRICS_PORT"])
    if service_name in WORKERS:
        return int(env["RADREPORT_WORKER_METRICS_PORT"])
    if service_name in TRITONS:
        return 8002
    raise AssertionError(f"Prometheus scrapes {service_name}, which serves no metrics")


def test_prometheus_targets_are_compose_services(services: dict[str, Any]) -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    names: dict[str, list[str]] = {name: [name] for name in services}
    names["triton"] = sorted(TRITONS)  # the alias of both profiles' Triton
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in names, f"{job['job_name']}: no compose service {host}"
                for name in names[host]:
                    assert _metrics_port(name, services[name]) == int(port), target
                    scraped.add(name)
    assert scraped == APP_SERVICES | TRITONS


def test_observability_files_are_mounted_where_their_configs_look(
        services: dict[str, Any]) -> None:
    def mounts(name: str) -> dict[str, Path]:
        found = {}
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"
                found[target] = ROOT / source
        return found

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == (
        OBSERVABILITY / "prometheus" / "prometheus.yml")
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    for rule_file in config["rule_files"]:
        assert prometheus[rule_file] == OBSERVABILITY / "prometheus" / "alerts.yml"

    grafana = mounts("grafana")
    provisioning = grafana["/etc/grafana/provisioning"]
    assert provisioning == OBSERVABILITY / "grafana" / "provisioning"
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers, "no Grafana dashboard provider"
    for provider in providers:
        assert grafana[provider["options"]["path"]] == OBSERVABILITY / "grafana" / "dashboards"
    datasources = [d for f in sorted((provisioning / "datasources").glob("*.y*ml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    uids = {d["uid"] for d in datasources}
    assert any(d["url"] == "http://prometheus:9090" for d in datasources)
    for dashboard in sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json")):
        used = _datasource_uids(json.loads(dashboard.read_text()))
        assert used <= uids, f"{dashboard.name} uses datasources {used - uids} Grafana lacks"


def _datasource_uids(node: Any) -> set[str]:
    """Every datasource uid a dashboard names (template variables such as ${ds} aside)."""
    found: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and "uid" in source and "$" not in str(source["uid"]):
            found.add(str(source["uid"]))
        for value in node.values():
            found |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= _datasource_uids(value)
    return found
