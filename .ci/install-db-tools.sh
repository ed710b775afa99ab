#!/usr/bin/env bash
# The real dump tools the data tests compare against (Debian): the sqlite3 CLI (.dump) and a
# PostgreSQL server with pg_dump (the tests start a throwaway cluster as the postgres user), and
# a MariaDB server (tests/data/test_livedb.py starts a throwaway one for the mysql:// reader).
# Tests that need them skip with a reason when they are absent, so this is best effort.
set -uo pipefail
command -v apt-get >/dev/null || { echo "install-db-tools: no apt-get, skipped"; exit 0; }
need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
ls /usr/lib/postgresql/*/bin/pg_dump >/dev/null 2>&1 || need+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
[ ${#need[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi
"${sudo[@]}" apt-get update -qq || echo "install-db-tools: apt-get update failed"
# one package at a time: a server that cannot be had (no mirror carries it) leaves the others in
for pkg in "${need[@]}"; do
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || echo "install-db-tools: could not install $pkg"
done
# the package may start a system-wide server; the tests start their own on a free port
if [ "$(id -u)" = 0 ] && command -v service >/dev/null; then
    service mariadb stop >/dev/null 2>&1 || true
fi
exit 0
