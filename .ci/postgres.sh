#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the test suite (the `risloc tune` workers share a
# study in it) and print the SQLAlchemy URL; `.ci/postgres.sh stop DIR` stops and removes it.
# Uses the machine's PostgreSQL binaries (Debian: /usr/lib/postgresql/<v>/bin); runs the
# server as the 'postgres' user when called as root (initdb refuses root).
set -euo pipefail
if [ "${1:-}" = "stop" ]; then
  dir=$2
  as=(); [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$(cat "$dir/bin")/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit 0
fi
bin=$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
bin=$(dirname "$(readlink -f "$bin/initdb")")
dir=$(mktemp -d /tmp/risloc-pg.XXXXXX)
echo "$bin" > "$dir/bin"
as=()
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(runuser -u postgres --); fi
port=$(( 54000 + RANDOM % 1000 ))
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U risloc >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-k $dir -p $port -c listen_addresses=''" start >/dev/null
"${as[@]}" "$bin/createdb" -h "$dir" -p "$port" -U risloc risloc_test
echo "$dir postgresql+psycopg2://risloc@/risloc_test?host=$dir&port=$port"
