#!/usr/bin/env bash
# `make containers` (and a step of .ci/run): build every image from cold, scan the runtime
# image's locked packages for known vulnerabilities, run docker-compose.yml under podman-compose
# and the Helm chart under `podman kube play`, each with the smoke test. Prints the figures.
# Needs root or sudo for podman (Debian's podman 4.3 with runc; see containers.conf).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${RADREPORT_VENV:-.venv}
PACKAGES=(podman runc debootstrap uidmap dcmtk)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "containers: please install the Debian packages: ${PACKAGES[*]}" >&2; exit 1
  fi
  echo "containers: installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "containers: podman runs as root here (runc, cgroupfs); run as root or with sudo" >&2
  exit 1
fi

echo "== images (cold build of the project's images; base images cached)"
bash deploy/containers/build.sh --cold

echo "== known vulnerabilities in the runtime image's locked packages (pip-audit, not a gate)"
"$VENV/bin/pip-audit" --disable-pip --require-hashes --progress-spinner off --format json \
  --output var/containers/pip-audit.json -r deploy/requirements/runtime.txt >/dev/null 2>&1 || true
"$VENV/bin/python" - var/containers/pip-audit.json <<'PYEOF'
import json, sys
try:
    found = json.load(open(sys.argv[1]))["dependencies"]
except (OSError, ValueError, KeyError) as error:
    sys.exit(print(f"pip-audit produced no report ({error})"))
skipped = [d for d in found if d.get("skip_reason")]
audited = [d for d in found if not d.get("skip_reason")]
vulnerable = [d for d in audited if d.get("vulns")]
print(f"pip-audit: {len(audited)} of {len(found)} locked packages audited, {len(skipped)} could "
      f"not be (no vulnerability service reachable); {len(vulnerable)} with known vulnerabilities")
for d in vulnerable:
    for v in d["vulns"]:
        print(f"  {d['name']} {d['version']}: {v['id']} fixed in {', '.join(v['fix_versions']) or '-'}")
PYEOF
# Where pip-audit's services are refused (behind some registry proxies), PyPI's per-project
# JSON still gives the advisories of each project's newest release.
"$VENV/bin/radreport" bench advisories --lock deploy/requirements/runtime.txt || true
"$VENV/bin/radreport" bench advisories --lock deploy/triton/requirements-cpu.txt || true

echo "== docker-compose.yml under podman-compose"
"$VENV/bin/radreport" bench compose
echo "== the Helm chart under podman kube play"
"$VENV/bin/radreport" bench kube
