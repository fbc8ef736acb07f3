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
"$VENV/bin/pip-audit" --disable-pip --require-hashes --progress-spinner off \
  -r deploy/requirements/runtime.txt || echo "containers: pip-audit reported the above"

echo "== docker-compose.yml under podman-compose"
"$VENV/bin/radreport" bench compose
echo "== the Helm chart under podman kube play"
"$VENV/bin/radreport" bench kube
