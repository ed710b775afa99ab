"""Live server databases through ``homellm data inspect`` and ``homellm data ingest``: a table of
dialogue rows (Russian, quotes, backslashes, NULLs, multi-line text, inserted out of order) in a
throwaway PostgreSQL cluster (conftest's ``postgres``) and a throwaway MariaDB server started
here; and an unreachable server: one line naming the URL without its password."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.data.conftest import PgCluster

HOMELLM = [sys.executable, "-m", "homellm.cli"]
PASSWORD = "pw-Secret-42"
MAP = ("table=messages,conversation=chat_id,role=sender,text=body,order=created_at,"
       "roles=user:user,bot:assistant,admin:system")
T0 = dt.datetime(2024, 3, 1, 12, 0, 0)

# (chat_id, seconds after T0, sender, body)
ROWS: list[tuple[int | None, int, str | None, str | None]] = [
    (10, 0, "user", "Привет! Как дела?"),
    (10, 5, "bot", 'Всё "хорошо", it\'s fine: C:\\temp\\new — \\n is not a newline'),
    (10, 7, "bot", None),                                  # NULL text: dropped
    (10, 9, "user", "многострочный\nтекст\n  с отступом"),
    (10, 60, "bot", "O'Brien сказал: '' и \\\\ и ``"),
    (20, 1, "admin", "Отвечай кратко."),
    (20, 2, "user", "2+2?"),
    (20, 3, None, "no speaker"),                           # NULL role: unmapped, dropped
    (20, 4, "bot", "4"),
    (20, 8, "user", "а ещё?"),
    (20, 9, "user", "ну?"),                                # same role again: merged
    (30, 0, "user", "одна реплика"),                       # one turn: fewer than min_turns
    (None, 0, "user", "без беседы"),                       # NULL conversation: dropped
]
EXPECTED = {
    10: [("user", "Привет! Как дела?"),
         ("assistant", 'Всё "хорошо", it\'s fine: C:\\temp\\new — \\n is not a newline'),
         ("user", "многострочный\nтекст\nс отступом"),
         ("assistant", "O'Brien сказал: '' и \\\\ и ``")],
    20: [("system", "Отвечай кратко."), ("user", "2+2?"), ("assistant", "4"),
         ("user", "а ещё?\nну?")],
}
DROPPED = {"empty_texts": 1, "unmapped_roles": 1, "short": 1, "no_conversation": 1}


def homellm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOMELLM, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def load_rows(conn: Any) -> None:
    """The rows in a shuffled insertion order (so only ORDER BY created_at restores them)."""
    shuffled = list(ROWS)
    random.Random(3).shuffle(shuffled)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO messages (chat_id, created_at, sender, body) "
                        "VALUES (%s, %s, %s, %s)",
                        [(c, T0 + dt.timedelta(seconds=s), who, body)
                         for c, s, who, body in shuffled])
    conn.commit()


# -- the servers ----------------------------------------------------------------------------
@pytest.fixture
def pg_url(postgres: PgCluster) -> str:
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install "
                                  "'psycopg[binary]' (the test extra)")
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS chat")
        admin.execute("CREATE DATABASE chat ENCODING 'UTF8' TEMPLATE template0")
    with psycopg.connect(postgres.url("chat")) as conn:
        conn.execute("CREATE TABLE messages (id serial PRIMARY KEY, chat_id bigint, "
                     "created_at timestamp NOT NULL, sender text, body text)")
        conn.execute("CREATE TABLE users (id integer, name text)")
        conn.execute("CREATE SCHEMA archive")
        conn.execute("CREATE TABLE archive.old (x integer)")
        conn.execute("INSERT INTO archive.old VALUES (1), (2)")
        load_rows(conn)
    # trust authentication ignores the password: it is there to be kept out of what we print
    return postgres.url("chat", password=PASSWORD)


def _mariadb_bin(*names: str) -> str | None:
    for name in names:
        for where in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if where and os.access(where, os.X_OK):
                return where
    return None


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A throwaway MariaDB (or MySQL) server on 127.0.0.1 without grant tables; yields its
    port."""
    pymysql = pytest.importorskip("pymysql", reason="the MySQL driver: pip install pymysql "
                                  "(the test extra)")
    server = _mariadb_bin("mariadbd", "mysqld")
    install = _mariadb_bin("mariadb-install-db", "mysql_install_db")
    if server is None or install is None:
        pytest.skip("MariaDB server binaries (mariadbd, mariadb-install-db) are not installed "
                    "(.ci/install-db-tools.sh installs mariadb-server)")
    home = tmp_path_factory.mktemp("mariadb")
    data, port = home / "data", free_port()
    user = pwd.getpwuid(os.geteuid()).pw_name   # as root, mariadbd wants --user=root said
    done = subprocess.run([install, "--no-defaults", f"--datadir={data}", f"--user={user}",
                           "--auth-root-authentication-method=normal", "--skip-test-db"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"mariadb-install-db failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    log = home / "err.log"
    proc = subprocess.Popen([server, "--no-defaults", f"--datadir={data}", f"--user={user}",
                             f"--socket={home / 'sock'}", f"--port={port}",
                             "--bind-address=127.0.0.1", f"--pid-file={home / 'pid'}",
                             f"--log-error={log}", "--skip-grant-tables", "--skip-name-resolve",
                             "--skip-log-bin", "--innodb-buffer-pool-size=16M",
                             "--innodb-flush-log-at-trx-commit=0",
                             "--character-set-server=utf8mb4"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user="root").close()
                break
            except pymysql.err.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    pytest.fail(f"mariadbd did not start: {tail}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mysql_url(mariadb: int) -> str:
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", port=mariadb, user="root", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS chat")
        cur.execute("CREATE DATABASE chat CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    admin.close()
    conn = pymysql.connect(host="127.0.0.1", port=mariadb, user="root", database="chat")
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, chat_id BIGINT, "
                    "created_at DATETIME NOT NULL, sender VARCHAR(16), body TEXT)")
        cur.execute("CREATE TABLE users (id INT, name VARCHAR(40))")
    load_rows(conn)
    conn.close()
    # no grant tables: any password is accepted, and must still not be printed
    return f"mysql://root:{PASSWORD}@127.0.0.1:{mariadb}/chat"


@pytest.fixture(params=["postgresql", "mysql"])
def live_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


# -- the tests ------------------------------------------------------------------------------
def test_inspect_lists_tables_columns_counts(live_url: str) -> None:
    done = homellm("data", "inspect", live_url, "--samples", "2", "--json")
    assert done.returncode == 0, done.stderr
    tables = {t["name"]: t for t in json.loads(done.stdout)}
    expected = {"messages", "users"} | ({"archive.old"} if live_url.startswith("postgres")
                                       else set())
    assert set(tables) == expected
    messages = tables["messages"]
    assert messages["columns"] == ["id", "chat_id", "created_at", "sender", "body"]
    assert messages["rows"] == len(ROWS)
    assert len(messages["samples"]) == 2 and all(len(r) == 5 for r in messages["samples"])
    assert tables["users"]["rows"] == 0 and tables["users"]["samples"] == []
    if "archive.old" in tables:
        assert tables["archive.old"]["rows"] == 2
        assert sorted(r[0] for r in tables["archive.old"]["samples"]) == [1, 2]
    assert PASSWORD not in done.stdout + done.stderr

    shown = homellm("data", "inspect", live_url, "--samples", "1")   # the rich tables
    assert shown.returncode == 0, shown.stderr
    assert f"messages: {len(ROWS)} rows" in shown.stdout and "users: 0 rows" in shown.stdout


def test_ingest_conversations_equal_the_rows(live_url: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    began = time.monotonic()
    done = homellm("data", "ingest", live_url, "-o", str(out), "--map", MAP, "--workers", "1",
                   "--no-scrub", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    (entry,) = manifest["inputs"].values()
    assert entry["status"] == "done" and entry["kind"] == "database"
    stats = entry["dialogue"]
    assert stats["rows"] == len(ROWS)
    assert stats["conversations"] == len(EXPECTED)
    assert stats["turns"] == sum(len(t) for t in EXPECTED.values())
    assert {k: stats[k] for k in DROPPED} == DROPPED

    records = [json.loads(line) for f in sorted((out / "ingested").glob("*.jsonl"))
               for line in f.read_text(encoding="utf-8").splitlines()]
    got = {r["meta"]["conversation"]: [(t["role"], t["text"]) for t in r["turns"]]
           for r in records}
    assert got == EXPECTED
    for r in records:
        assert r["kind"] == "conversation"
        assert r["id"] == f"chat:messages:{r['meta']['conversation']}"
        assert r["source"].endswith("/chat") and PASSWORD not in r["source"]
    speakers = [t["speaker"] for r in records if r["meta"]["conversation"] == 20
                for t in r["turns"]]
    assert speakers == ["admin", "user", "bot", "user"]
    assert time.monotonic() - began < 20


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
@pytest.mark.parametrize("command", ["inspect", "ingest"])
def test_unreachable_server_one_line_error(scheme: str, command: str, tmp_path: Path) -> None:
    pytest.importorskip("psycopg" if scheme == "postgresql" else "pymysql")
    port = free_port()   # nothing listens there
    url = f"{scheme}://me:{PASSWORD}@127.0.0.1:{port}/chat"
    args = ([url] if command == "inspect"
            else [url, "-o", str(tmp_path / "ds"), "--map", MAP, "--workers", "1"])
    began = time.monotonic()
    done = homellm("data", command, *args)
    assert time.monotonic() - began < 20
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output and PASSWORD not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert f"{scheme}://127.0.0.1:{port}/chat" in errors[0]
    assert "connect" in errors[0].lower()


def test_manifest_keeps_no_password(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    done = homellm("data", "ingest", pg_url, "-o", str(out), "--map", MAP, "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in (out / "manifest.json").read_text(encoding="utf-8")
