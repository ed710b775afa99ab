#!/usr/bin/env bash
# The real dump tools the data tests compare against (Debian): the sqlite3 CLI (.dump) and a
# PostgreSQL server with pg_dump (the tests start a throwaway cluster as the postgres user).
# Tests that need them skip with a reason when they are absent, so this is best effort.
set -uo pipefail
command -v apt-get >/dev/null || { echo "install-db-tools: no apt-get, skipped"; exit 0; }
need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
ls /usr/lib/postgresql/*/bin/pg_dump >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi
"${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null || echo "install-db-tools: could not install ${need[*]}"
