#!/usr/bin/env sh
# As the official redis image: protected mode off by default (the container's network is the
# boundary; the chart sets a password), so other containers can connect. An explicit
# --protected-mode among the arguments still wins, and a config file stays the first argument.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  case "${1:-}" in
    ""|-*) exec redis-server --protected-mode no "$@" ;;
    *) config=$1; shift; exec redis-server "$config" --protected-mode no "$@" ;;
  esac
fi
exec "$@"
