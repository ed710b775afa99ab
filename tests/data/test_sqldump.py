"""SQL dumps parsed back: dumps written by the real tools (Python's sqlite3 iterdump, the sqlite3
CLI, pg_dump against a throwaway PostgreSQL cluster) and hand-written MySQL/PostgreSQL dumps with
the hard cases; truncated and corrupt dumps; memory bounded on a dump bigger than the bound."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homellm.data.sqldump import DumpError, DumpReader, DumpStats, iter_dump
from homellm.errors import HomellmError

TRICKY = ["Привет, мир", "it's \"quoted\"", "back\\slash \\n not a newline", "line\nbreak",
          "tab\tand\r\nCRLF", "", "semi;colon -- not a comment /* nor this */", "O''Brien",
          "ёжик 🦔 emoji", "\\", "'", "$$dollar$$", "E'x'"]


def rows_of(path: Path, **kw) -> list[tuple]:
    return [r.values for r in iter_dump(path, **kw)]


def sqlite_db(path: Path, texts: list[str | None]) -> list[tuple]:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "my msgs" (id INTEGER PRIMARY KEY, body TEXT, data BLOB, x REAL)')
    rows = [(i + 1, t, bytes([i % 256, 0, 255]) if i % 3 == 0 else None, i / 7 if i % 2 else None)
            for i, t in enumerate(texts)]
    con.executemany('INSERT INTO "my msgs" VALUES (?, ?, ?, ?)', rows)
    con.commit()
    con.close()
    return rows


def test_sqlite_iterdump_round_trip(tmp_path: Path) -> None:
    expected = sqlite_db(tmp_path / "a.db", [*TRICKY, None])
    con = sqlite3.connect(tmp_path / "a.db")
    dump = tmp_path / "a.sql"
    dump.write_text("\n".join(con.iterdump()), encoding="utf-8")
    reader = DumpReader(dump)
    got = list(reader)
    assert [r.values for r in got] == expected
    assert got[0].table == "my msgs" and got[0].columns == ("id", "body", "data", "x")
    assert reader.tables["my msgs"].types == ("integer", "text", "blob", "real")


def test_sqlite_cli_dump_round_trip(tmp_path: Path) -> None:
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 CLI is not installed (apt-get install sqlite3)")
    expected = sqlite_db(tmp_path / "a.db", [*TRICKY, None])
    dump = tmp_path / "a.sql"
    with open(dump, "wb") as out:
        subprocess.run(["sqlite3", str(tmp_path / "a.db"), ".dump"], stdout=out, check=True)
    assert rows_of(dump) == expected   # replace(...,'\n',char(10)) / unistr() included


MYSQL = r"""-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET NAMES utf8mb4 */;
DROP TABLE IF EXISTS `messages`;
CREATE TABLE `messages` (
  `id` int NOT NULL AUTO_INCREMENT,
  `chat id` bigint DEFAULT NULL COMMENT 'the chat, (with, commas)',
  `sender` varchar(32) DEFAULT 'a;b',
  `body` mediumtext,
  `raw` blob,
  PRIMARY KEY (`id`),
  KEY `chat` (`chat id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
LOCK TABLES `messages` WRITE;
/*!40000 ALTER TABLE `messages` DISABLE KEYS */;
INSERT INTO `messages` VALUES (1,10,'user',
'Привет, it\'s \"q\" a\\b\nnew\r\t\0z\Z end',_binary 'a\0b\\'),
(2,10,'bot','it''s; -- fine',0x4142),
(3,NULL,_utf8mb4'x',-1.5e3,NULL),(4,-7,'u','',X'00ff');
INSERT IGNORE INTO `messages` (`id`, `body`) VALUES
(5,'/* not a comment */'),(6,"double \"quoted\"");
REPLACE INTO messages VALUES (7,1,'u','v',NULL) ON DUPLICATE KEY UPDATE body=VALUES(body);
/*!40000 ALTER TABLE `messages` ENABLE KEYS */;
UNLOCK TABLES;
DELIMITER ;;
CREATE DEFINER=`root`@`%` PROCEDURE `p`() BEGIN SELECT 'x;y'; INSERT INTO t VALUES (1); END ;;
DELIMITER ;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`%`*/ /*!50003 TRIGGER `t` BEFORE INSERT ON `messages`
FOR EACH ROW BEGIN SET NEW.body = 'a;b'; END */;;
INSERT INTO `messages` VALUES (8,2,'bot','last',NULL);
-- Dump completed on 2026-11-23
"""

MYSQL_ROWS = [
    (1, 10, "user", "Привет, it's \"q\" a\\b\nnew\r\t\x00z\x1a end", b"a\x00b\\"),
    (2, 10, "bot", "it's; -- fine", b"AB"),
    (3, None, "x", -1500.0, None),
    (4, -7, "u", "", b"\x00\xff"),
    (5, "/* not a comment */"),
    (6, 'double "quoted"'),
    (7, 1, "u", "v", None),
    (8, 2, "bot", "last", None),
]


@pytest.mark.parametrize("compress", [False, True])
def test_mysql_dump_quoting_and_escapes(tmp_path: Path, compress: bool) -> None:
    data = MYSQL.encode()
    dump = tmp_path / ("m.sql.gz" if compress else "m.sql")
    dump.write_bytes(gzip.compress(data) if compress else data)
    got = list(iter_dump(dump))
    assert [r.values for r in got] == MYSQL_ROWS
    assert got[0].columns == ("id", "chat id", "sender", "body", "raw")
    assert got[4].columns == ("id", "body")
    starts = ["(1,10", "(2,10", "(3,NULL", "(4,-7", "(5,", "(6,", "(7,1", "(8,2"]
    assert [r.line for r in got] == [MYSQL[:MYSQL.index(s)].count("\n") + 1 for s in starts]


PG = r'''--
-- PostgreSQL database dump
--
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
CREATE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql AS $_$
BEGIN NEW.body := 'x;y'; RETURN NEW; END; $_$;
CREATE TABLE public."Messages" (
    id bigint NOT NULL,
    "chat ""id""" integer,
    body text,
    ok boolean,
    data bytea,
    score double precision
);
COPY public."Messages" (id, "chat ""id""", body, ok, data, score) FROM stdin;
1	7	При\tвет\n\\back'q"	t	\\x00ff	1.5
2	\N	\N	f	\N	-2
3	8	octal \101 hex \x42	\N	\\x	0
\.
INSERT INTO public."Messages" (id, body) OVERRIDING SYSTEM VALUE VALUES (4, 'a\b''c');
INSERT INTO public."Messages" VALUES (5, 9, E'e\'s\ttab\\', true, NULL, 1e3) ON CONFLICT DO NOTHING;
SET standard_conforming_strings = off;
INSERT INTO public."Messages" (id, body) VALUES (6, 'now\'escaped\\');
'''


def test_postgres_dump_quoting_copy_and_e_strings(tmp_path: Path) -> None:
    dump = tmp_path / "p.sql"
    dump.write_text(PG, encoding="utf-8")
    got = list(iter_dump(dump))
    assert {r.table for r in got} == {'public.Messages'}
    assert got[0].columns == ("id", 'chat "id"', "body", "ok", "data", "score")
    assert [r.values for r in got] == [
        (1, 7, "При\tвет\n\\back'q\"", True, b"\x00\xff", 1.5),
        (2, None, None, False, None, -2.0),
        (3, 8, "octal A hex B", None, b"", 0.0),
        (4, "a\\b'c"),
        (5, 9, "e's\ttab\\", True, None, 1000.0),
        (6, "now'escaped\\"),
    ]
    assert got[1].line == 18
    assert rows_of(dump, tables={"Messages"}) == [r.values for r in got]
    assert rows_of(dump, tables={"other"}) == []


# -- the real pg_dump (the throwaway cluster: the `postgres` fixture in conftest.py) -------
def _load_pg(run: Callable[..., bytes], texts: list[str | None]) -> list[tuple]:
    rows = [(i + 1, 100 + i // 3, t) for i, t in enumerate(texts)]
    copy = "".join(f"{i}\t{c}\t{_copy_field(t)}\n" for i, c, t in rows)
    run("psql", "-q", "-v", "ON_ERROR_STOP=1", input=(
        "DROP TABLE IF EXISTS public.messages;"
        "CREATE TABLE public.messages (id bigint PRIMARY KEY, chat_id integer, body text);\n"
        f"COPY public.messages FROM stdin;\n{copy}\\.\n"))
    return rows


def _copy_field(t: str | None) -> str:
    if t is None:
        return "\\N"
    return t.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@pytest.mark.parametrize("mode", ["copy", "--inserts", "--column-inserts"])
def test_pg_dump_round_trip(postgres: Callable[..., bytes], tmp_path: Path, mode: str) -> None:
    expected = _load_pg(postgres, [*TRICKY, None])
    dump = tmp_path / "pg.sql"
    dump.write_bytes(postgres("pg_dump", *([] if mode == "copy" else [mode])))
    got = list(iter_dump(dump, tables={"messages"}))
    assert [r.values for r in got] == expected
    assert {(r.table, r.columns) for r in got} == {("public.messages", ("id", "chat_id", "body"))}


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40)
TEXTS = st.lists(st.one_of(st.none(), TEXT, st.sampled_from(TRICKY)), min_size=1, max_size=8)
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(texts=TEXTS)
def test_property_sqlite_iterdump(tmp_path: Path, texts: list[str | None]) -> None:
    db, dump = tmp_path / "p.db", tmp_path / "p.sql"
    db.unlink(missing_ok=True)
    expected = sqlite_db(db, texts)
    with sqlite3.connect(db) as con:
        dump.write_text("\n".join(con.iterdump()), encoding="utf-8")
    assert rows_of(dump) == expected


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=TEXTS, mode=st.sampled_from(["copy", "--inserts"]))
def test_property_pg_dump(postgres: Callable[..., bytes], tmp_path: Path, texts: list[str | None],
                          mode: str) -> None:
    expected = _load_pg(postgres, texts)
    dump = tmp_path / "pg.sql"
    dump.write_bytes(postgres("pg_dump", *([] if mode == "copy" else [mode])))
    assert rows_of(dump, tables={"messages"}) == expected


def _mysql_quote(t: str | None) -> str:
    """Quoting as mysqldump writes it (mysql_real_escape_string)."""
    if t is None:
        return "NULL"
    for a, b in (("\\", "\\\\"), ("'", "\\'"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"),
                 ("\x00", "\\0"), ("\x1a", "\\Z")):
        t = t.replace(a, b)
    return f"'{t}'"


@PROPERTY
@given(texts=st.lists(st.one_of(st.none(), st.text(max_size=40), st.sampled_from(TRICKY)),
                      min_size=1, max_size=8))
def test_property_mysql_escaping(tmp_path: Path, texts: list[str | None]) -> None:
    texts = [t.encode("utf-8", "replace").decode() if t else t for t in texts]
    dump = tmp_path / "m.sql"
    values = ",".join(f"({i},{_mysql_quote(t)})" for i, t in enumerate(texts))
    dump.write_text(f"-- MySQL dump\nINSERT INTO `t` (`id`, `b`) VALUES {values};\n", "utf-8")
    assert rows_of(dump) == list(enumerate(texts))


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", ["'Привет, it", "(2,10,", "(8,2,'bot','last',NULL)", "Привет"])
def test_truncated_dump_one_line_error(tmp_path: Path, cut: str) -> None:
    data = MYSQL.encode()
    end = data.index(cut.encode()) + len(cut.encode())
    dump = tmp_path / "cut.sql"
    dump.write_bytes(data[:end])
    with pytest.raises(HomellmError) as err:
        list(iter_dump(dump))
    msg = str(err.value)
    assert "\n" not in msg and str(dump) in msg and "truncated" in msg and "(byte " in msg
    line = data[:end].count(b"\n") + 1
    assert f"cut.sql:{line} " in msg or f"cut.sql:{line - 1} " in msg


def test_truncated_copy_block(tmp_path: Path) -> None:
    dump = tmp_path / "cut.sql"
    dump.write_text(PG[:PG.index("3\t8\t")], encoding="utf-8")
    with pytest.raises(DumpError, match=r"cut\.sql:\d+ \(byte \d+\): COPY data .*truncated"):
        list(iter_dump(dump))


def test_skip_bad_skips_and_counts(tmp_path: Path) -> None:
    dump = tmp_path / "bad.sql"
    dump.write_text(textwrap.dedent("""\
        -- MySQL dump
        INSERT INTO `t` VALUES (1,'a'),(2,'b');
        INSERT INTO `t` VALUES (3,'c'),(4,'d' oops),(5,'e');
        INSERT INTO `t` VALUES (6,'f',7);
        INSERT INTO `t` VALUES (8,'h');
        """), encoding="utf-8")
    with pytest.raises(DumpError, match=r"bad\.sql:3 \(byte \d+\): expected ',' or '\)'"):
        list(iter_dump(dump))
    stats = DumpStats()
    got = [r.values for r in iter_dump(dump, skip_bad=True, stats=stats)]
    assert got == [(1, "a"), (2, "b"), (3, "c"), (8, "h")]
    assert stats.statements_skipped == 2 and stats.rows == 4 and len(stats.errors) == 2
    assert "3 values for 2 columns" in stats.errors[1]


def test_not_a_dump_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises((HomellmError, OSError)):
        list(iter_dump(tmp_path / "missing.sql"))
    junk = tmp_path / "junk.sql"
    junk.write_text("hello world, this is not SQL at all\n")
    assert rows_of(junk) == []


def test_memory_stays_bounded_on_a_big_dump(tmp_path: Path) -> None:
    """~50 MB in ONE INSERT statement (the hard case): peak RSS grows < 40 MB."""
    dump = tmp_path / "big.sql"
    row = ",(%d,17,'user','" + "Привет мир, it\\'s a line\\nwith escapes; " * 8 + "')"
    with open(dump, "w", encoding="utf-8") as out:
        out.write("-- MySQL dump\nINSERT INTO `m` VALUES (0,0,'u','x')")
        block = "".join(row % i for i in range(2000))
        for _ in range(64):
            out.write(block)
        out.write(";\n")
    assert dump.stat().st_size > 50 << 20
    probe = textwrap.dedent("""
        import resource, sys
        from homellm.data.sqldump import iter_dump
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        n = sum(1 for _ in iter_dump(sys.argv[1])) if sys.argv[2] == "1" else 0
        print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """)
    done = subprocess.run([sys.executable, "-c", probe, str(dump), "1"], capture_output=True,
                          text=True, check=True, timeout=120)
    rows, grew_mb = map(int, done.stdout.split())
    assert rows == 128_001
    size_mb = dump.stat().st_size >> 20
    assert grew_mb < 40, f"peak RSS grew {grew_mb} MB reading a {size_mb} MB dump"


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunk_boundaries_anywhere(tmp_path: Path, chunk: int) -> None:
    """Rows, strings, comments and COPY lines cut by a read at any byte parse the same."""
    pg = PG[:PG.index("SET standard_conforming_strings = off")]
    for name, text in (("m.sql", MYSQL), ("p.sql", pg)):
        dump = tmp_path / name
        dump.write_text(text * 300, encoding="utf-8")
        whole = list(DumpReader(dump))
        assert list(DumpReader(dump, chunk_size=chunk)) == whole
        assert len(whole) == 300 * (8 if name == "m.sql" else 5)
