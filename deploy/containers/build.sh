#!/usr/bin/env bash
# Build every image of the project with podman, from nothing but Debian's packages and PyPI:
#   localhost/debian:bookworm-min          debootstrap --variant=minbase (base, cached)
#   localhost/python:3.11-slim-bookworm    Debian's Python 3.11 on it    (base, cached)
#   localhost/radreport-{redis,postgres,prometheus}:bookworm   stand-ins   (cached)
#   radreport:VERSION, radreport-triton-cpu:VERSION   deploy/docker/*.Dockerfile (the project)
# Against a reachable registry, --python-image python:3.11-slim-bookworm builds the project's
# images from the official base instead (the Dockerfiles' PYTHON_IMAGE argument) and skips the
# stand-ins; Compose and the chart then pull the official Redis, PostgreSQL and Prometheus.
#
#   usage: build.sh [--cold] [--rebuild-bases] [--python-image IMAGE] [--trust-store FILE]
#     --cold           build the project's images without podman's layer cache
#     --rebuild-bases  rebuild the base images and stand-ins too
#     --trust-store    CA bundle that pip inside the build trusts, bind-mounted read-only, never
#                      copied into an image (default: the host's /etc/ssl/certs/ca-certificates.crt,
#                      for registries behind a TLS-inspecting proxy); "none" for public CAs only
# Writes var/containers/build.json: seconds per image, and the images' sizes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers/containers.conf}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
DEBIAN_IMAGE=localhost/debian:bookworm-min
DEBIAN_SOURCE=bookworm-minbase-2  # bump to rebuild the base after changing how it is made
LOCAL_PYTHON=localhost/python:3.11-slim-bookworm
PYTHON_IMAGE=$LOCAL_PYTHON
TRUST_STORE=${RADREPORT_TRUST_STORE:-/etc/ssl/certs/ca-certificates.crt}
COLD=0
REBUILD_BASES=0
while (($#)); do
  case $1 in
    --cold) COLD=1 ;;
    --rebuild-bases) REBUILD_BASES=1 ;;
    --python-image) PYTHON_IMAGE=$2; shift ;;
    --trust-store) TRUST_STORE=$2; shift ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
  shift
done
OUT=var/containers
mkdir -p "$OUT"
: > "$OUT/build-times.tsv"

need_image() {  # $1: image, $2: digest of its sources; true when it must be (re)built
  ((REBUILD_BASES)) && return 0
  [ "$(podman image inspect --format '{{index .Labels "radreport.source"}}' "$1" 2>/dev/null)" \
    != "$2" ]
}
timed() {  # $1: image name for the report; rest: the command
  local name=$1 start; shift
  start=$(date +%s.%N)
  "$@"
  printf '%s\t%s\n' "$name" "$(python3 -c "print(round($(date +%s.%N) - $start, 1))")" \
    >> "$OUT/build-times.tsv"
}

debian_base() {
  local root
  root=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$OUT/debootstrap.log"
  tar -C "$root" -c . | podman import --quiet --change "LABEL radreport.source=$DEBIAN_SOURCE" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    - "$DEBIAN_IMAGE" >/dev/null
}

if [ "$PYTHON_IMAGE" = "$LOCAL_PYTHON" ]; then
  if need_image "$DEBIAN_IMAGE" "$DEBIAN_SOURCE"; then
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is needed" >&2; exit 1; }
    echo "build.sh: $DEBIAN_IMAGE (debootstrap)"
    timed "$DEBIAN_IMAGE" debian_base
  fi
  # A stand-in is rebuilt when its Containerfile, an entry point beside it or its base changed.
  stand_in() {  # $1: image, $2: Containerfile, $3: base image, rest: build arguments
    local image=$1 file=$2 base=$3 digest; shift 3
    digest=$( (cat "deploy/containers/$file" deploy/containers/*-entrypoint.sh
               podman image inspect --format '{{.Id}}' "$base") | sha256sum | cut -c1-16)
    if need_image "$image" "$digest"; then
      echo "build.sh: $image"
      timed "$image" podman build --quiet --network=host --pull=never -f "deploy/containers/$file" \
        --label "radreport.source=$digest" -t "$image" "$@" deploy/containers >/dev/null
    fi
  }
  stand_in "$LOCAL_PYTHON" python.Containerfile "$DEBIAN_IMAGE" \
    --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"
  for service in redis postgres prometheus; do
    stand_in "localhost/radreport-$service:bookworm" "$service.Containerfile" "$LOCAL_PYTHON" \
      --build-arg "PYTHON_IMAGE=$LOCAL_PYTHON"
  done
fi

# docker format: OCI images cannot carry a HEALTHCHECK.
project=(--format docker --network=host --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
if [ "$PYTHON_IMAGE" = "$LOCAL_PYTHON" ]; then project+=(--pull=never); fi
if ((COLD)); then
  project+=(--no-cache)
  podman image prune -f >/dev/null 2>&1 || true  # earlier builds' untagged layers: a cold build needs none
fi
if [ "$TRUST_STORE" != "none" ]; then
  [ -f "$TRUST_STORE" ] || { echo "build.sh: no trust store at $TRUST_STORE" >&2; exit 1; }
  project+=(-v "$(readlink -f "$TRUST_STORE"):/etc/ssl/certs/ca-certificates.crt:ro")
fi
for spec in "radreport:$VERSION runtime" "radreport-triton-cpu:$VERSION triton-cpu"; do
  read -r image dockerfile <<<"$spec"
  echo "build.sh: $image"
  timed "$image" podman build --quiet "${project[@]}" -f "deploy/docker/$dockerfile.Dockerfile" \
    -t "localhost/$image" . >/dev/null
done

# What was built, how long it took and how large it is.
python3 - "$OUT" "$COLD" "$PYTHON_IMAGE" <<'PYEOF'
import json, subprocess, sys
out, cold, python_image = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
seconds = dict(line.split("\t") for line in open(f"{out}/build-times.tsv").read().splitlines())
listed = subprocess.run(["podman", "images", "--filter", "reference=localhost/*", "--format",
                         "{{.Repository}}:{{.Tag}}\t{{.ID}}"], capture_output=True, text=True,
                        check=True).stdout.split()
sizes = {}
for name, image_id in zip(listed[::2], listed[1::2]):
    size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", image_id],
                          capture_output=True, text=True, check=True).stdout.strip()
    sizes[name.removeprefix("localhost/")] = int(size)
report = {"cold": cold, "python_image": python_image,
          "build_seconds": {k: float(v) for k, v in seconds.items()}, "sizes_bytes": sizes}
json.dump(report, open(f"{out}/build.json", "w"), indent=2)
for name, size in sorted(sizes.items()):
    took = seconds.get(name) or seconds.get(f"localhost/{name}")
    print(f"{name:48} {size / 1e6:8.0f} MB" + (f"   built in {float(took):.0f} s" if took else ""))
PYEOF
