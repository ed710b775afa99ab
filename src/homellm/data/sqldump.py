"""Rows out of SQL dump files (MySQL/MariaDB, PostgreSQL, SQLite ``.dump``), without a server.

The file is read as bytes in chunks and parsed statement by statement; an INSERT is parsed one
row tuple at a time and a COPY block one line at a time, so memory is bounded by the longest
single row (or non-INSERT statement), never by the file. Whole tokens are matched by compiled
regular expressions (C speed); Python code runs once per value, not per character.

Whether a backslash escapes inside '...' is the one thing the syntax does not say: MySQL dumps
escape with it, PostgreSQL (standard_conforming_strings=on) and SQLite do not. The file's head
decides (``dialect="auto"``), and ``SET standard_conforming_strings`` statements are obeyed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from homellm.data.sqlsyntax import (
    _AFTER,
    _CAST,
    _COPY,
    _CREATE,
    _ESTR,
    _FUNC,
    _HEAD,
    _ID_RX,
    _INSERT,
    _LEAD,
    _OPEN,
    _RESYNC,
    _SEP,
    _WORD,
    Value,
    _c_unescape,
    _call,
    _codec,
    _columns,
    _convert,
    _copy_converter,
    _mysql_unescape,
    _name,
    _open,
    _patterns,
    _unquote,
)
from homellm.errors import HomellmError

__all__ = ["DumpError", "DumpReader", "DumpRow", "DumpStats", "TableSchema", "Value",
           "iter_dump"]
_LOOKAHEAD = 1 << 16   # bytes kept ahead of a statement's start so its header is whole


class DumpError(HomellmError):
    """A dump that cannot be read: truncated, corrupt, or in a form we do not parse."""


class DumpRow(NamedTuple):
    table: str                     # as written, unquoted; schema-qualified when the dump is
    columns: tuple[str, ...]       # from the INSERT/COPY column list or the CREATE TABLE
    values: tuple[Value, ...]
    line: int                      # 1-based line where the row starts


@dataclass
class TableSchema:
    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...] = ()    # declared types, lowercased ("" when none)


@dataclass
class DumpStats:
    rows: int = 0
    statements_skipped: int = 0    # bad statements passed over with skip_bad=True
    rows_skipped: int = 0          # bad COPY lines passed over with skip_bad=True
    bytes_skipped: int = 0
    unsupported: int = 0           # INSERT ... SELECT / SET forms: not rows, skipped
    errors: list[str] = field(default_factory=list)   # the first problems skipped


class _Incomplete(Exception):
    """The buffer ends inside the unit being parsed: read more and parse it again."""


class _Bad(Exception):
    def __init__(self, reason: str, at: int) -> None:
        super().__init__(reason)
        self.at = at


class DumpReader:
    """Iterate over the rows of a dump; ``stats`` and ``tables`` fill in as it goes."""

    def __init__(self, path: str | Path, *, tables: Collection[str] | None = None,
                 skip_bad: bool = False, dialect: str = "auto", encoding: str | None = None,
                 chunk_size: int = 1 << 22, max_row_bytes: int = 1 << 28) -> None:
        self.path = Path(path)
        self.want = set(tables) if tables is not None else None
        if dialect not in ("auto", "mysql", "postgres", "sqlite", "standard"):
            raise ValueError(f"dialect must be auto, mysql, postgres, sqlite or standard, not "
                             f"{dialect!r}")
        self.skip_bad, self.dialect, self.encoding = skip_bad, dialect, encoding
        self.chunk, self.max_row = chunk_size, max_row_bytes
        self.stats = DumpStats()
        self.tables: dict[str, TableSchema] = {}

    # -- the buffer -------------------------------------------------------------------------
    def _more(self) -> bool:
        """Drop what is consumed (before ``self.pos``), read more; False (and the buffer as it
        was) at end of file."""
        data = b"" if self.eof else self.f.read(max(self.chunk, len(self.buf) - self.pos))
        if not data:
            self.eof = True
            return False
        self._line(self.pos)
        drop = self.pos
        self.buf = self.buf[drop:] + data
        self.base += drop
        self._lpos -= drop
        self.pos = 0
        if len(self.buf) > self.max_row:
            raise DumpError(f"{self.path}:{self._lno} (byte {self.base}): one statement or row "
                            f"runs past {self.max_row >> 20} MB; corrupt dump?")
        return True

    def _line(self, p: int) -> int:
        if p >= self._lpos:
            self._lno += self.buf.count(b"\n", self._lpos, p)
            self._lpos = p
            return self._lno
        return self._lno - self.buf.count(b"\n", p, self._lpos)

    # -- the statements ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[DumpRow]:
        with _open(self.path) as self.f:
            self.buf, self.pos, self.base, self.eof = b"", 0, 0, False
            self._lpos, self._lno, self.delim = 0, 1, b";"
            while len(self.buf) < _LOOKAHEAD and self._more():
                pass
            if self.buf.startswith(b"\xef\xbb\xbf"):
                self.pos = 3
            self._sniff(self.buf[:_LOOKAHEAD])
            yield from self._statements()

    def _sniff(self, head: bytes) -> None:
        if self.dialect == "auto":   # the tools' own headers first: row text may say anything
            start = head[:300]
            if b"PostgreSQL database dump" in start:
                self.dialect = "postgres"
            elif re.search(rb"MySQL dump|MariaDB dump|phpMyAdmin", start):
                self.dialect = "mysql"
            elif head.lstrip().startswith((b"PRAGMA", b"BEGIN TRANSACTION;")):
                self.dialect = "sqlite"
            elif re.search(rb"SET standard_conforming_strings|FROM stdin;", head):
                self.dialect = "postgres"
            elif re.search(rb"/\*!\d{5}|(?i:INTO|TABLE)\s+`", head):
                self.dialect = "mysql"
            else:
                self.dialect = "mysql" if re.search(rb"\\['\"]", head) else "standard"
        self.backslash = self.dialect == "mysql"
        if self.encoding is None:
            m = re.search(rb"(?im)^(?:/\*!\d+ )?SET\s+(?:NAMES\s+'?(\w+)|client_encoding\s*=\s*"
                          rb"'(\w+)')", head[:8192])
            self.encoding = _codec((m.group(1) or m.group(2)).decode()) if m else "utf-8"
        self.rx = _patterns(self.backslash, self.delim)

    def _statements(self) -> Iterator[DumpRow]:
        while True:
            m = _LEAD.match(self.buf, self.pos)
            self.pos = p = m.end()
            if len(self.buf) - p < _LOOKAHEAD and self._more():
                continue
            buf = self.buf
            if p >= len(buf) or buf.startswith(b"--", p):
                return
            try:
                if buf.startswith(b"/*", p):
                    raise _Bad("unterminated /* comment", p)
                head = _HEAD.match(buf, p)
                kind = head.group(1).upper() if head else b""
                if kind in (b"INSERT", b"REPLACE"):
                    yield from self._insert()
                elif kind == b"COPY":
                    yield from self._copy()
                elif buf[p] == 0x5C or kind == b"DELIMITER":  # psql \command, mysql DELIMITER
                    end = buf.find(b"\n", p)
                    if kind == b"DELIMITER":
                        self.delim = buf[p + 9:end].strip() or b";"
                        self.rx = _patterns(self.backslash, self.delim)
                    self.pos = end + 1 if end >= 0 else len(buf)
                else:
                    self._other(self._statement(), kind)
            except _Bad as bad:
                self._bad(bad)

    def _statement(self) -> bytes:
        """The current statement, delimiter included; the buffer grows until it is whole."""
        while True:
            start = self.pos
            end = self.rx.stmt.match(self.buf, start).end()
            if self.buf.startswith(self.delim, end):
                self.pos = end + len(self.delim)
                return self.buf[start:self.pos]
            if not self._more():
                if end >= len(self.buf):
                    self.pos = end
                    return self.buf[start:end]
                raise _Bad("unterminated string or comment at end of file (truncated dump?)", end)

    def _other(self, text: bytes, kind: bytes) -> None:
        if kind == b"CREATE":
            m = _CREATE.match(text)
            if m:
                cols, types = _columns(text[m.end():])
                name = _name(m.group(1))
                self.tables[name] = TableSchema(name, cols, types)
        elif kind == b"SET":
            m = re.match(rb"(?i)SET\s+standard_conforming_strings\s*=\s*'?(on|off)", text)
            if m:
                self.backslash = m.group(1).lower() == b"off"
                self.rx = _patterns(self.backslash, self.delim)
            m = re.match(rb"(?i)SET\s+(?:NAMES\s+|client_encoding\s*=\s*)'?(\w+)", text)
            if m:
                self.encoding = _codec(m.group(1).decode())

    def _bad(self, bad: _Bad) -> None:
        where = f"{self.path}:{self._line(max(bad.at, self.pos))} (byte {self.base + bad.at})"
        msg = f"{where}: {bad}"
        if not self.skip_bad:
            raise DumpError(msg) from None
        self.stats.statements_skipped += 1
        if len(self.stats.errors) < 20:
            self.stats.errors.append(msg)
        at = max(bad.at, self.pos)
        while True:
            m = _RESYNC.search(self.buf, at)
            if m:
                self.stats.bytes_skipped += m.end() - self.pos
                self.pos = m.end()
                return
            self.stats.bytes_skipped += max(0, len(self.buf) - 64 - self.pos)
            self.pos = at = max(self.pos, len(self.buf) - 64)
            if not self._more():
                self.pos = len(self.buf)
                return
            at = self.pos

    def _table(self, raw_name: bytes, raw_cols: bytes | None) -> tuple[str, tuple[str, ...] | None]:
        name = _name(raw_name)
        cols = tuple(_unquote(m.group()) for m in _ID_RX.finditer(raw_cols)) if raw_cols else None
        known = self.tables.get(name) or self.tables.get(name.rsplit(".", 1)[-1])
        if cols is None and known is not None:
            cols = known.columns
        if known is None:
            self.tables[name] = TableSchema(name, cols or ())
        return name, cols

    def _wanted(self, name: str) -> bool:
        return self.want is None or name in self.want or name.rsplit(".", 1)[-1] in self.want

    # -- INSERT ... VALUES (...), (...); ----------------------------------------------------
    def _insert(self) -> Iterator[DumpRow]:
        m = _INSERT.match(self.buf, self.pos)
        if m is None:   # INSERT ... SELECT, MySQL's INSERT ... SET: no literal rows
            self.stats.unsupported += 1
            self._statement()
            return
        name, cols = self._table(m.group(1), m.group(2))
        want, stats = self._wanted(name), self.stats
        self.pos = m.end()
        while True:
            start = self.pos
            try:
                values, end, term = self._tuple(start)
            except _Incomplete as inc:
                at = inc.args[0] - self.pos
                if self._more():
                    continue
                raise _Bad(self._truncated(self.pos + at), self.pos + at) from None
            if cols is None:
                cols = tuple(f"c{i + 1}" for i in range(len(values)))
                self.tables[name].columns = cols
            if len(values) != len(cols):
                raise _Bad(f"a row of {len(values)} values for {len(cols)} columns of {name}",
                           start)
            self.pos = end
            if want:
                stats.rows += 1
                yield DumpRow(name, cols, values, self._line(start + 1))
            if term == b";":
                return
            if term != b",":   # ON DUPLICATE KEY UPDATE, ON CONFLICT, RETURNING
                self._statement()
                return

    def _truncated(self, p: int) -> str:
        if self.rx.partial.match(self.buf, p):
            return "unterminated string at end of file (truncated dump?)"
        return "INSERT not finished at end of file (truncated dump?)"

    def _tuple(self, p: int) -> tuple[tuple[Value, ...], int, bytes]:
        buf, enc, value = self.buf, self.encoding, self.rx.value.match
        m = _OPEN.match(buf, p)
        if m is None:
            raise self._fail(p, "expected '(' starting a row")
        q, values = m.end(), []
        add = values.append
        while True:
            m = value(buf, q)
            if m is None:   # functions, casts, E'' strings, or the end of the buffer
                v, q = _expr(self, q)
                m = _SEP.match(buf, q)
                if m is None:
                    raise self._fail(q, "expected ',' or ')' after a value")
                add(v)
            else:
                kind = m.lastgroup
                if kind == "s":
                    raw = m.group(2)[1:-1]
                    if self.backslash:
                        if b"\\" in raw or b"''" in raw:
                            raw = _mysql_unescape(raw)
                    elif b"''" in raw:
                        raw = raw.replace(b"''", b"'")
                    add(raw.decode(enc, "replace"))
                elif kind == "n":
                    add(int(m.group(3)))
                elif kind == "z":
                    add(None)
                else:
                    add(_convert(*m.group(1, 5, 6, 7, 8), enc))  # type: ignore[arg-type]
            q = m.end()
            if buf[q - 1] == 0x29:
                break
        m = _AFTER.match(buf, q)
        if m.end() >= len(buf) and not (self.eof and m.group(1)):
            raise self._fail(m.end(), "")
        return tuple(values), m.end(), m.group(1) or buf[m.end():m.end() + 1]

    def _fail(self, q: int, what: str) -> Exception:
        rest = self.buf[q:].strip()
        if not self.eof and (len(rest) < 4096 or self.rx.partial.match(self.buf, q)):
            return _Incomplete(q)
        if self.eof and (not rest or self.rx.partial.match(self.buf, q)):
            return _Bad(self._truncated(q), q)
        snippet = self.buf[q:q + 30].decode("utf-8", "replace").strip()
        return _Bad(f"{what}, found {snippet!r}", q)

    # -- COPY t (cols) FROM stdin; ... \. ---------------------------------------------------
    def _copy(self) -> Iterator[DumpRow]:
        m = _COPY.match(self.buf, self.pos)
        if m is None:
            self.stats.unsupported += 1
            self._statement()
            return
        name, cols = self._table(m.group(1), m.group(2))
        known = self.tables.get(name) or self.tables.get(name.rsplit(".", 1)[-1])
        types = dict(zip(known.columns, known.types, strict=False)) if known else {}
        convs = [_copy_converter(types.get(c, ""), self.encoding) for c in cols or ()]
        want, stats = self._wanted(name), self.stats
        self.pos = m.end()
        while True:
            buf, p = self.buf, self.pos
            e = buf.find(b"\n", p)
            if e < 0:
                if self._more():
                    continue
                if buf[p:].rstrip() != b"\\.":
                    raise _Bad(f"COPY data for {name} not ended by '\\.' (truncated dump?)", p)
                e = len(buf)
            line = buf[p:e]
            self.pos = e + 1
            if line == b"\\." or line == b"\\.\r":
                return
            if not want:
                continue
            fields = line.split(b"\t")
            try:
                if len(fields) != len(convs):
                    raise ValueError(f"{len(fields)} fields for {len(convs)} columns")
                values = tuple([c(f) for c, f in zip(convs, fields, strict=True)])
            except ValueError as exc:
                if not self.skip_bad:
                    raise _Bad(f"a bad COPY line for {name}: {exc}", p) from None
                stats.rows_skipped += 1
                continue
            stats.rows += 1
            yield DumpRow(name, cols or (), values, self._line(p + 1))


def _expr(r: DumpReader, q: int) -> tuple[Value, int]:
    """The slow path: E'...' strings, true/false, SQLite's replace()/char()/unistr(), casts."""
    buf = r.buf
    if (m := _FUNC.match(buf, q)) is not None:
        fn, args, q = m.group(1).lower(), [], m.end()
        while True:
            v, q = _expr(r, q)
            args.append(v)
            s = _SEP.match(buf, q)
            if s is None:
                raise r._fail(q, f"expected ',' or ')' in {fn.decode()}()")
            q = s.end()
            if buf[q - 1] == 0x29:
                break
        try:
            v = _call(fn, args)
        except (ValueError, TypeError, OverflowError) as exc:
            raise _Bad(f"{fn.decode()}(): {exc}", q) from None
    elif (m := _ESTR.match(buf, q)) is not None:
        v, q = _c_unescape(m.group(1).replace(b"''", b"'")).decode(r.encoding, "replace"), m.end()
    elif (m := _WORD.match(buf, q)) is not None:
        v, q = {b"true": True, b"false": False}.get(m.group(1).lower()), m.end()
    elif (m := r.rx.atom.match(buf, q)) is not None:
        v, q = _convert_any(r, m), m.end()
    else:
        raise r._fail(q, "expected a value")
    return v, _CAST.match(buf, q).end()


def _convert_any(r: DumpReader, m: re.Match[bytes]) -> Value:
    b_, s, n, z, f, h, x, d = (g or b"" for g in m.groups())
    if s:
        raw = _mysql_unescape(s[1:-1]) if r.backslash else s[1:-1].replace(b"''", b"'")
        return raw.decode(r.encoding, "replace")
    if n:
        return int(n)
    return None if z else _convert(b_, f, h, x, d, r.encoding)


def iter_dump(path: str | Path, *, tables: Collection[str] | None = None, skip_bad: bool = False,
              dialect: str = "auto", stats: DumpStats | None = None) -> Iterator[DumpRow]:
    """Every row of every INSERT and COPY in ``path`` (``.sql``, ``.sql.gz``/``.bz2``/``.xz``),
    streamed; ``tables`` limits the rows yielded (bare or schema-qualified names)."""
    reader = DumpReader(path, tables=tables, skip_bad=skip_bad, dialect=dialect)
    if stats is not None:
        reader.stats = stats
    yield from reader
