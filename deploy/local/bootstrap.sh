#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need on a fresh Debian/Ubuntu machine:
# the Debian tools the tests use as real peers, and a Python 3.11 virtualenv with the project.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${RADREPORT_VENV:-.venv}
DEBIAN_PACKAGES=(dicom3tools dcmtk default-jre-headless redis-server orthanc prometheus chromium
                 postgresql)

missing=()
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)  # pycocoevalcap
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # the stack's own broker
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)  # a real PACS peer in the tests
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # scrapes the stack in a test
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the review page's browser test
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)  # restart test
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bootstrap: please install the Debian packages: ${DEBIAN_PACKAGES[*]}" >&2; exit 1
  fi
  echo "bootstrap: installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "bootstrap: Python 3.11 is required (found $("$PYTHON" --version 2>&1))" >&2; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# Every package from the hashed lock (deploy/requirements/lock.sh), then the project itself and
# PyTorch, which is pinned by version only (the train extra; its CPU build on our machines).
# --no-deps: the lock is complete except PyTorch, which some locked packages (peft,
# accelerate) require and which hash-checking mode cannot take unpinned; it comes next, and
# `pip check` then proves every requirement met.
stamp="$VENV/.installed-$(cat pyproject.toml deploy/requirements/dev.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r deploy/requirements/dev.txt
  "$VENV/bin/python" -m pip install -q -e '.[dev,train]'
  "$VENV/bin/python" -m pip check
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
# The gRPC API's Python stubs (radreport/v1), generated from proto/ with grpcio-tools.
"$VENV/bin/python" -m radreport.proto_build >/dev/null
# A real CPU tritonserver with its Python backend and that backend's environment.
PYTHON="$VENV/bin/python" bash deploy/triton/install_cpu_server.sh "$VENV/tritonserver"
