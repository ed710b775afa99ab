"""Dialogues out of databases: a live database (SQLite by the stdlib; PostgreSQL and MySQL when
their drivers are installed) or an SQL dump file, mapped column by column onto Conversations.

A dump is not sorted by conversation, so its rows are spilled into a temporary SQLite database
on disk and read back ``ORDER BY conversation, order``: SQLite sorts larger-than-memory data in
bounded memory, and it is in the standard library. A live database sorts its own rows.
"""

from __future__ import annotations

import collections
import itertools
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from homellm.data.records import Conversation, Role, Turn
from homellm.data.sqldump import DumpReader, DumpStats, Value
from homellm.errors import ConfigError, HomellmError

ROLES: tuple[str, ...] = ("user", "assistant", "system")
_KEYS = ("table", "conversation", "text", "role", "order", "roles", "min_turns")


class DatabaseError(HomellmError):
    """A live database that cannot be reached or read (the driver's reason, on one line)."""


@dataclass
class DialogueMap:
    """Which table and columns hold the dialogues, and how a speaker becomes a role.

    ``role_rule``: ``map`` (``roles`` maps speaker values to roles; unmapped turns are
    dropped), ``first`` (each conversation's first speaker is the user, everyone else the
    assistant), ``alternate`` (turns alternate user/assistant, for tables without a role
    column).
    """

    table: str
    conversation: str
    text: str
    role: str | None = None
    order: str | None = None
    roles: dict[str, Role] = field(default_factory=dict)
    role_rule: Literal["map", "first", "alternate"] = "map"
    min_turns: int = 2

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "--map") -> DialogueMap:
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                              f"expected {', '.join(_KEYS)}")
        missing = [k for k in ("table", "conversation", "text") if not data.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (e.g. table=messages,"
                              "conversation=chat_id,role=sender,text=body,order=created_at)")
        roles, rule = data.get("roles"), "map" if data.get("role") else "alternate"
        if isinstance(roles, str) and roles.strip() in ("first", "alternate"):
            rule, roles = roles.strip(), {}
        elif isinstance(roles, str):
            pairs = [p.split(":", 1) for p in roles.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{where}: roles must look like 'user:user,bot:assistant', "
                                  f"'first' or 'alternate', got {roles!r}")
            roles = {k.strip(): v.strip() for k, v in pairs}
        roles = {str(k): str(v) for k, v in (roles or {}).items()}
        bad = {v for v in roles.values() if v not in ROLES}
        if bad:
            raise ConfigError(f"{where}: role(s) {', '.join(sorted(bad))} are not one of "
                              f"{', '.join(ROLES)}")
        if rule == "map" and not roles:
            raise ConfigError(f"{where}: role={data['role']} needs roles=VALUE:ROLE,... "
                              "(e.g. roles=user:user,bot:assistant) or roles=first")
        if rule != "alternate" and not data.get("role"):
            raise ConfigError(f"{where}: roles={data.get('roles')} needs the role column "
                              "(role=COLUMN)")
        try:
            min_turns = int(data.get("min_turns", 2))
        except ValueError:
            raise ConfigError(f"{where}: min_turns must be a number") from None
        return cls(table=str(data["table"]), conversation=str(data["conversation"]),
                   text=str(data["text"]), role=data.get("role") or None,
                   order=data.get("order") or None, roles=cast(dict[str, Role], roles),
                   role_rule=cast(Any, rule), min_turns=min_turns)

    @classmethod
    def parse(cls, spec: str) -> DialogueMap:
        """``table=messages,conversation=chat_id,role=sender,text=body,order=created_at,
        roles=user:user,bot:assistant`` (a piece without '=' continues the previous value)."""
        data: dict[str, str] = {}
        key = None
        for piece in spec.split(","):
            if "=" in piece:
                key, _, value = piece.partition("=")
                key = key.strip()
                data[key] = value.strip()
            elif key is not None and piece.strip():
                data[key] += "," + piece.strip()
            elif piece.strip():
                raise ConfigError(f"--map: expected KEY=VALUE, got {piece.strip()!r}")
        return cls.from_dict(data)

    @classmethod
    def load(cls, spec: str | Path) -> DialogueMap:
        """A YAML mapping file (same keys; ``roles`` a mapping or ``first``) or a --map string."""
        path = Path(spec)
        if str(spec).endswith((".yaml", ".yml")) or ("=" not in str(spec) and path.is_file()):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot read the mapping ({exc})") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a mapping of table, conversation, text, ...")
            return cls.from_dict(data, str(path))
        return cls.parse(str(spec))

    def resolve(self, tables: dict[str, Sequence[str]], where: str) -> tuple[str, list[int]]:
        """The table's real name and the positions of conversation, order, role, text in it."""
        name = next((t for t in tables if t == self.table), None) or next(
            (t for t in tables if t.rsplit(".", 1)[-1] == self.table), None)
        if name is None:
            listing = "; ".join(f"{t}({', '.join(c)})" for t, c in tables.items()) or "none"
            raise ConfigError(f"{where}: no table {self.table!r}; tables: {listing}")
        cols = list(tables[name])
        wanted = [self.conversation, self.order, self.role, self.text]
        missing = [c for c in wanted if c is not None and c not in cols]
        if missing:
            raise ConfigError(f"{where}: table {name} has no column {', '.join(missing)}; "
                              f"columns: {', '.join(cols)}")
        return name, [cols.index(c) if c is not None else -1 for c in wanted]


@dataclass
class DialogueStats:
    rows: int = 0
    conversations: int = 0
    turns: int = 0
    empty_texts: int = 0          # turns dropped: no text
    unmapped_roles: int = 0       # turns dropped: speaker not in ``roles``
    short: int = 0                # conversations dropped: fewer than min_turns turns
    no_conversation: int = 0      # rows dropped: no conversation id
    dump: DumpStats | None = None


@dataclass
class TableInfo:
    name: str
    columns: tuple[str, ...]
    row_count: int
    sample_rows: list[tuple[Value, ...]]
    types: tuple[str, ...] = ()


def source_label(source: str | Path) -> str:
    """The source as records and messages name it: a URL loses its password."""
    return re.sub(r"//[^/@]*@", "//", str(source))


def _live_kind(source: str | Path) -> str | None:
    s = str(source)
    for prefix, kind in (("sqlite:", "sqlite"), ("postgres", "postgresql"), ("mysql", "mysql"),
                         ("mariadb", "mysql")):
        if s.startswith(prefix) and "://" in s:
            return kind
    path = Path(s)
    if not path.is_file():
        raise ConfigError(f"{s}: no such file (and not a sqlite://, postgresql:// or mysql:// URL)")
    with open(path, "rb") as f:
        return "sqlite" if f.read(16) == b"SQLite format 3\x00" else None


class _Live:
    """A live database through the DB-API: SQLite always, the others when a driver is there.
    The driver's errors become one-line ``DatabaseError``s naming the URL without its password."""

    def __init__(self, source: str | Path, kind: str) -> None:
        self.kind, self.label, url = kind, source_label(source), str(source)
        secret = re.match(r"[\w+.-]+://[^:/@]*:([^@/]*)@", url)
        self._secret = secret[1] if secret and secret[1] else None
        self._cursors = 0
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        try:
            self._connect(url)
        except self.errors as exc:
            raise DatabaseError(f"{self.label}: cannot connect ({self.reason(exc)})") from None

    def reason(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._secret, "***") if self._secret else text

    def _connect(self, url: str) -> None:
        kind = self.kind
        if kind == "sqlite":
            path = re.sub(r"^sqlite:///", "", url) if url.startswith("sqlite:") else url
            if not Path(path).is_file():
                raise ConfigError(f"{self.label}: no SQLite database at {path}")
            self.conn: Any = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        elif kind == "postgresql":
            try:
                import psycopg  # type: ignore[import-not-found]
            except ImportError:
                raise ConfigError(f"{self.label}: reading PostgreSQL needs its driver: "
                                  "pip install 'psycopg[binary]' (or use a pg_dump file)") from None
            self.errors = (psycopg.Error,)
            self.conn = psycopg.connect(url.replace("postgres://", "postgresql://", 1),
                                        connect_timeout=10)
        else:
            try:
                import pymysql  # type: ignore[import-not-found]
                import pymysql.cursors  # type: ignore[import-not-found]
            except ImportError:
                raise ConfigError(f"{self.label}: reading MySQL needs its driver: "
                                  "pip install pymysql (or use a mysqldump file)") from None
            m = re.match(r"\w+://(?:([^:@/]*)(?::([^@/]*))?@)?([^:/]*)(?::(\d+))?/(\w+)", url)
            if m is None:
                raise ConfigError(f"{self.label}: expected mysql://user:pass@host:port/db")
            self.errors = (pymysql.err.Error,)
            self.conn = pymysql.connect(user=m[1] or "root", password=m[2] or "",
                                        host=m[3] or "localhost", port=int(m[4] or 3306),
                                        database=m[5], cursorclass=pymysql.cursors.SSCursor)

    def quote(self, name: str) -> str:
        if self.kind == "mysql":
            return "`" + name.replace("`", "``") + "`"
        return ".".join('"' + p.replace('"', '""') + '"' for p in name.split("."))

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        """Rows in batches (a server-side cursor: a big table is never held whole); the cursor
        is closed even when the caller stops early, so the next query can run."""
        self._cursors += 1
        try:
            cur = (self.conn.cursor(name=f"homellm_{self._cursors}")
                   if self.kind == "postgresql" else self.conn.cursor())
            try:
                cur.execute(sql)
                while batch := cur.fetchmany(1000):
                    yield from batch
            finally:
                cur.close()
        except self.errors as exc:
            raise DatabaseError(f"{self.label}: {self.reason(exc)}") from None

    def tables(self) -> dict[str, list[str]]:
        if self.kind == "sqlite":
            names = [r[0] for r in self.query("SELECT name FROM sqlite_master WHERE type IN "
                                              "('table', 'view') ORDER BY name")]
            return {n: [r[1] for r in self.query(f"PRAGMA table_info({self.quote(n)})")]
                    for n in names if not n.startswith("sqlite_")}
        where = ("table_schema NOT IN ('pg_catalog', 'information_schema')"
                 if self.kind == "postgresql" else "table_schema = DATABASE()")
        out: dict[str, list[str]] = {}
        for schema, table, col in self.query(
                "SELECT table_schema, table_name, column_name FROM information_schema.columns "
                f"WHERE {where} ORDER BY table_schema, table_name, ordinal_position"):
            bare = schema in ("public", None) or self.kind == "mysql"
            name = table if bare else f"{schema}.{table}"
            out.setdefault(name, []).append(col)
        return out


def iter_conversations(source: str | Path, mapping: DialogueMap, *, skip_bad: bool = False,
                       tmp_dir: str | Path | None = None,
                       stats: DialogueStats | None = None) -> Iterator[Conversation]:
    """Conversations from a dump file or a live database, grouped and ordered as ``mapping``
    says: consecutive turns of one role merged, empty texts dropped, ids ``file:table:conv``."""
    stats = stats if stats is not None else DialogueStats()
    kind = _live_kind(source)
    label = source_label(source)
    if kind is not None:
        db = _Live(source, kind)
        try:
            table, idx = mapping.resolve(db.tables(), label)
            cols = db.tables()[table]
            sel = ", ".join(db.quote(cols[i]) if i >= 0 else "NULL" for i in idx)
            order = ", ".join(db.quote(cols[i]) for i in idx[:2] if i >= 0)
            rows = db.query(f"SELECT {sel} FROM {db.quote(table)} ORDER BY {order}")
            yield from _build(_live_rows(rows, stats), mapping, f"{Path(label).name}:{table}",
                              label, stats)
        finally:
            db.conn.close()
        return
    with tempfile.TemporaryDirectory(prefix="homellm-dialogues-", dir=tmp_dir) as tmp:
        spill = sqlite3.connect(Path(tmp) / "spill.db")
        try:
            table = _spill(Path(source), mapping, spill, skip_bad, stats)
            rows = spill.execute("SELECT conv, speaker, text FROM r ORDER BY conv, ord, seq")
            yield from _build(rows, mapping, f"{Path(source).name}:{table}", label, stats)
        finally:
            spill.close()


def _plain(value: Any) -> Value:
    """A driver's value as a dump would give it: dates, decimals, UUIDs... as their text."""
    if value is None or isinstance(value, (str, int, float, bytes)):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value)


def _live_rows(rows: Iterator[tuple[Any, ...]],
               stats: DialogueStats) -> Iterator[tuple[Any, Any, Any]]:
    """(conversation, order, role, text) rows → (conversation, role, text), counted; rows
    without a conversation id dropped (and counted) as in a dump."""
    for conv, _, speaker, text in rows:
        stats.rows += 1
        if conv is None:
            stats.no_conversation += 1
            continue
        yield _plain(conv), speaker, text


def _spill(path: Path, mapping: DialogueMap, db: sqlite3.Connection, skip_bad: bool,
           stats: DialogueStats) -> str:
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", "cache_size=-65536"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE r (conv, ord, seq INTEGER, speaker, text)")
    reader = DumpReader(path, tables={mapping.table}, skip_bad=skip_bad)
    stats.dump = reader.stats
    found: list[str] = []

    def rows() -> Iterator[tuple[Any, ...]]:
        resolved: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for seq, row in enumerate(reader):
            key = (row.table, row.columns)
            idx = resolved.get(key)
            if idx is None:   # check against the whole table: an INSERT may list fewer columns
                schema = reader.tables.get(row.table)
                cols = schema.columns if schema and schema.columns else row.columns
                name, _ = mapping.resolve({row.table: cols}, str(path))
                wanted = (mapping.conversation, mapping.order, mapping.role, mapping.text)
                idx = resolved[key] = [row.columns.index(c) if c in row.columns else -1
                                       for c in wanted]
                found[:] = [name]
            v = row.values
            if idx[0] < 0 or v[idx[0]] is None:
                stats.no_conversation += 1
                continue
            yield (v[idx[0]], v[idx[1]] if idx[1] >= 0 else None, seq,
                   v[idx[2]] if idx[2] >= 0 else None, v[idx[3]] if idx[3] >= 0 else None)

    with db:
        db.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?)", rows())
    if not found:   # the table never had a row: say so, or list what the dump holds
        mapping.resolve({t.name: t.columns for t in reader.tables.values()}, str(path))
    stats.rows += reader.stats.rows
    return found[0] if found else mapping.table


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _build(rows: Iterator[tuple[Any, Any, Any]], mapping: DialogueMap, prefix: str, label: str,
           stats: DialogueStats) -> Iterator[Conversation]:
    """Sorted (conversation, speaker, text) rows → Conversations."""
    roles, rule = mapping.roles, mapping.role_rule
    unmapped: collections.Counter[str] = collections.Counter()
    mapped = 0
    for conv, group in itertools.groupby(rows, key=lambda r: r[0]):
        turns: list[Turn] = []
        first = None
        for _, speaker_value, text_value in group:
            text = _text(text_value)
            speaker = "" if speaker_value is None else _text(speaker_value)
            if not text:
                stats.empty_texts += 1
                continue
            if rule == "alternate":
                role: str | None = "assistant" if turns and turns[-1].role == "user" else "user"
            elif rule == "first":
                first = speaker if first is None else first
                role = "user" if speaker == first else "assistant"
            else:
                role = roles.get(speaker) or roles.get(speaker.lower())
            if role is None:
                stats.unmapped_roles += 1
                unmapped[speaker] += 1
                continue
            mapped += 1
            if turns and turns[-1].role == role:
                turns[-1].text += "\n" + text
            else:
                turns.append(Turn(role=cast(Role, role), text=text, speaker=speaker))
        if len(turns) < mapping.min_turns:
            stats.short += 1
            continue
        stats.conversations += 1
        stats.turns += len(turns)
        yield Conversation(id=f"{prefix}:{conv}", source=label, turns=turns,
                           meta={"table": prefix.split(":", 1)[1], "conversation": conv})
    if unmapped and not mapped:
        found = ", ".join(f"{value!r} ×{n}" for value, n in unmapped.most_common(10))
        more = f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else ""
        given = ",".join(f"{k}:{v}" for k, v in roles.items())
        raise ConfigError(f"{label}: roles={given} match no turn of table "
                          f"{prefix.split(':', 1)[1]}; its role column holds {found}{more}")


def inspect_dump(path_or_url: str | Path, samples: int = 3, *,
                 skip_bad: bool = False) -> list[TableInfo]:
    """Every table with its columns, row count and first rows: a dump streamed once, or a live
    database asked (for ``homellm data inspect``)."""
    kind = _live_kind(path_or_url)
    if kind is not None:
        db = _Live(path_or_url, kind)
        try:
            out = []
            for name, cols in db.tables().items():
                [(count,)] = db.query(f"SELECT COUNT(*) FROM {db.quote(name)}")
                first = [tuple(_plain(v) for v in row) for row in db.query(
                    f"SELECT * FROM {db.quote(name)} LIMIT {max(0, int(samples))}")]
                out.append(TableInfo(name, tuple(cols), count, first))
            return out
        finally:
            db.conn.close()
    reader = DumpReader(path_or_url, skip_bad=skip_bad)
    counts: dict[str, int] = {}
    firsts: dict[str, list[tuple[Value, ...]]] = {}
    for row in reader:
        counts[row.table] = counts.get(row.table, 0) + 1
        got = firsts.setdefault(row.table, [])
        if len(got) < samples:
            got.append(row.values)
    return [TableInfo(t.name, t.columns, counts.get(t.name, 0), firsts.get(t.name, []), t.types)
            for t in reader.tables.values()]
