#!/usr/bin/env bash
# Install a real CPU-only tritonserver (2.51, with the Python backend) for the local stack and
# the tests: the binary, its libraries and the Python-backend stub, taken from the PyPI wheel
# nvidia-pytriton 0.7.0 WITHOUT installing that package (it pins numpy<2, which our DICOM
# codecs cannot use), and the Python environment its Python backend runs our model.py in
# (DEST/env, from the hashed lock requirements-cpu.txt; deploy/requirements/lock.sh makes it
# from requirements-cpu.in). The wheel is checked against its hash too. See
# shared/notes/triton-on-cpu.md. Idempotent.
#   usage: install_cpu_server.sh [DEST]   (default: .venv/tritonserver)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.venv/tritonserver}
PY=${PYTHON:-.venv/bin/python}
WHEEL_VERSION=0.7.0
WHEEL_SHA256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df  # x86_64
SERVER="$DEST/pytriton/tritonserver"
REQUIREMENTS=deploy/triton/requirements-cpu.txt
stamp="$DEST/env/.installed-$(sha256sum "$REQUIREMENTS" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "install_cpu_server: Python environment of the backend in $DEST/env"
  "$PY" -m venv --clear "$DEST/env"
  "$DEST/env/bin/python" -m pip install -q --require-hashes -r "$REQUIREMENTS"
  touch "$stamp"
fi
if [ -x "$SERVER/bin/tritonserver" ] && [ -x "$SERVER/backends/python/triton_python_backend_stub" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "install_cpu_server: fetching nvidia-pytriton==$WHEEL_VERSION (tritonserver only)"
echo "nvidia-pytriton==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" > "$tmp/wheel.txt"
# With the environment's pip: a base Python may have none of its own (Debian's has none).
"$DEST/env/bin/python" -m pip download -q --no-deps --require-hashes -d "$tmp" -r "$tmp/wheel.txt"
mkdir -p "$DEST"
"$PY" - "$tmp"/nvidia_pytriton-*.whl "$DEST" <<'PYEOF'
import sys
import zipfile

wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    # Keep the wheel's layout: every RPATH in it is relative ($ORIGIN/../../../nvidia_pytriton.libs).
    names = [n for n in archive.namelist()
             if n.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
    archive.extractall(dest, names)
PYEOF
version=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# The backend directory must hold the stub for the running Python beside libtriton_python.so.
cp "$SERVER/python_backend_stubs/$version/triton_python_backend_stub" "$SERVER/backends/python/"
chmod +x "$SERVER/bin/tritonserver" "$SERVER/backends/python/triton_python_backend_stub"
echo "install_cpu_server: $SERVER/bin/tritonserver"
