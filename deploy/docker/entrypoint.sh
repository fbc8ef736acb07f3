#!/bin/sh
# Entry point of the runtime image. Settings that hold secrets may be given as files (Docker
# and Compose secrets): RADREPORT_DATABASE_URL_FILE and RADREPORT_REDIS_URL_FILE are read
# into RADREPORT_DATABASE_URL and RADREPORT_REDIS_URL. Then the command runs as PID 1.
set -eu
for name in RADREPORT_DATABASE_URL RADREPORT_REDIS_URL; do
  eval "file=\${${name}_FILE:-}"
  if [ -n "$file" ]; then
    if [ ! -r "$file" ]; then
      echo "entrypoint: ${name}_FILE=$file is not readable" >&2
      exit 1
    fi
    value=$(cat "$file")
    export "$name=$value"
    unset "${name}_FILE"
  fi
done
exec "$@"
