"""Fixtures the data tests share: a throwaway PostgreSQL cluster (for pg_dump output and the
live ``postgresql://`` reader), started once per session on a Unix socket."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PgCluster:
    """``cluster(tool, *args, input=)`` runs a server tool (psql and pg_dump against the
    ``postgres`` database) and returns its stdout; ``url(db)`` is a libpq URL to a database."""

    port = 54329

    def __init__(self, home: Path, tools: dict[str, str], prefix: list[str]) -> None:
        self.home, self.tools, self.prefix = home, tools, prefix
        self.socket = str(home)

    def __call__(self, tool: str, *args: str, input: str | None = None) -> bytes:
        cmd = [*self.prefix, self.tools.get(tool) or tool, *args]
        if tool in ("psql", "pg_dump"):
            cmd += ["-h", self.socket, "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        # bytes, not text: universal newlines would turn a '\r' inside a string into '\n'
        done = subprocess.run(cmd, input=input.encode() if input else None, capture_output=True,
                              timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"})
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def url(self, db: str = "postgres", password: str = "") -> str:
        """The socket directory as a percent-encoded host (libpq's form for Unix sockets)."""
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@{quote(self.socket, safe='')}:{self.port}/{db}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster on a Unix socket (trust authentication)."""
    tools = {n: _pg_bin(n) for n in ("initdb", "pg_ctl", "psql", "pg_dump")}
    if None in tools.values():
        pytest.skip("PostgreSQL binaries are not installed (.ci/install-db-tools.sh)")
    prefix: list[str] = []
    if os.geteuid() == 0:   # postgres refuses to run as root
        if shutil.which("runuser") is None or subprocess.run(
                ["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a postgres user to start PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    # not under pytest's basetemp: its 0700 parent keeps the postgres user out
    home = Path(tempfile.mkdtemp(prefix="homellm-pg-"))
    if prefix:
        shutil.chown(home, "postgres")
    data = home / "data"
    cluster = PgCluster(home, {k: v for k, v in tools.items() if v}, prefix)
    cluster("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--locale=C.UTF-8")
    cluster("pg_ctl", "-D", str(data), "-w", "-l", str(home / "log"), "-o",
            f"-k {cluster.socket} -c listen_addresses='' -p {cluster.port} -c fsync=off", "start")
    try:
        yield cluster
    finally:
        cluster("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)
