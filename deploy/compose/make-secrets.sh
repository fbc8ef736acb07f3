#!/usr/bin/env bash
# Make the secret files docker-compose.yml reads, once, with random passwords:
#   postgres_password       PostgreSQL's password (the postgres image reads it as root)
#   database_url            the services' RADREPORT_DATABASE_URL, with that password
#   grafana_admin_password  Grafana's admin password
# under ${RADREPORT_SECRETS_DIR:-var/secrets} (var/ is git-ignored). Existing files are kept.
# The folder is private (0700); the files are 0644 because Compose bind-mounts them as they
# are, and the services read them as uid 10001 and Grafana as uid 472.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${RADREPORT_SECRETS_DIR:-var/secrets}
mkdir -p "$dir"
chmod 0700 "$dir"
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
write() {  # write NAME VALUE: only when absent
  if [ ! -s "$dir/$1" ]; then
    (umask 022 && printf '%s\n' "$2" > "$dir/$1")
    echo "make-secrets: wrote $dir/$1"
  fi
}
write postgres_password "$(random)"
write database_url "postgresql+psycopg://radreport:$(head -n1 "$dir/postgres_password")@postgres:5432/radreport"
write grafana_admin_password "$(random)"
chmod 0644 "$dir/postgres_password" "$dir/database_url" "$dir/grafana_admin_password"
