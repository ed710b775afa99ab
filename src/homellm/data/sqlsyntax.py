"""The SQL a dump is written in: token patterns, escapes, literal values, CREATE TABLE columns.

``sqldump`` drives these over a stream; everything here works on one bytes buffer at a time.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple

Value = str | int | float | bytes | None

_ID = rb'(?:`(?:[^`]|``)++`|"(?:[^"]|"")++"|\[[^\]]++\]|[\w$\x80-\xff]++)'
_NAME = _ID + rb"(?:\s*+\.\s*+" + _ID + rb")*+"
_ID_RX = re.compile(_ID)
_INSERT = re.compile(rb"(?i)(?:INSERT|REPLACE)(?:\s++(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE)"
                     rb")*+\s++(?:INTO\s++)?(" + _NAME + rb")\s*+(?:\(([^)]*+)\)\s*+)?"
                     rb"(?:OVERRIDING\s++(?:SYSTEM|USER)\s++VALUE\s++)?VALUES?\s*+(?=\()")
_COPY = re.compile(rb"(?i)COPY\s++(" + _NAME + rb")\s*+(?:\(([^)]*+)\)\s*+)?FROM\s++stdin"
                   rb"\s*+;[ \t\r]*+\n")
_CREATE = re.compile(rb"(?i)CREATE\s++(?:OR\s++REPLACE\s++)?(?:(?:GLOBAL|LOCAL)\s++)?"
                     rb"(?:(?:TEMPORARY|TEMP|UNLOGGED)\s++)?TABLE\s++(?:IF\s++NOT\s++EXISTS"
                     rb"\s++)?(" + _NAME + rb")\s*+\(")
_HEAD = re.compile(rb"(?i)(INSERT|REPLACE|COPY|CREATE|SET|DELIMITER)\b")
_LEAD = re.compile(rb"(?:\s++|--[^\n]*+\n|/\*[\s\S]*?\*/)*+")
_OPEN = re.compile(rb"\s*+\(")
_SEP = re.compile(rb"[ \t\r\n]*+([,)])")
_AFTER = re.compile(rb"\s*+([,;]?)")
_RESYNC = re.compile(rb"\n(?=(?i:INSERT|REPLACE|COPY|CREATE|ALTER|DROP|SET|LOCK|UNLOCK|BEGIN"
                     rb"|COMMIT|PRAGMA|--|/\*|\\))")
_CONSTRAINT = re.compile(rb"(?i)(?:PRIMARY|KEY|UNIQUE|CONSTRAINT|INDEX|FOREIGN|CHECK|FULLTEXT"
                         rb"|SPATIAL|EXCLUDE|LIKE|PERIOD)\b")
_TYPE = re.compile(rb"\s*+([A-Za-z_]\w*+(?:\s++(?:precision|varying|unsigned))?)")
_PARTS = re.compile(rb"'(?:[^'\\]|\\[\s\S]|'')*+'|\"(?:[^\"]|\"\")*+\"|`(?:[^`]|``)*+`|[(),]"
                    rb"|[^'\"`(),]++")
_ESC = re.compile(rb"\\([\s\S])|''")
_MYSQL_ESC = {b"0": b"\0", b"b": b"\b", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"Z": b"\x1a",
              b"%": b"\\%", b"_": b"\\_"}
_COPY_ESC = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|([\s\S]))")
_C_ESC = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_ENCODINGS = {"utf8": "utf-8", "utf8mb4": "utf-8", "utf8mb3": "utf-8", "latin1": "cp1252",
              "win1251": "cp1251", "koi8": "koi8_r", "koi8r": "koi8_r", "sql_ascii": "utf-8"}


class _Rx(NamedTuple):
    value: re.Pattern[bytes]       # one simple value and the ',' or ')' after it
    atom: re.Pattern[bytes]        # the value alone
    stmt: re.Pattern[bytes]        # the tokens of a statement up to its delimiter
    partial: re.Pattern[bytes]     # a string literal still open at the end of the buffer


@lru_cache(maxsize=8)
def _patterns(backslash: bool, delim: bytes) -> _Rx:
    if backslash:
        body = rb"[^'\\]*+(?:(?:\\[\s\S]|'')[^'\\]*+)*+"
        dq = rb'"[^"\\]*+(?:(?:\\[\s\S]|"")[^"\\]*+)*+"'
        plain, dollar = rb"[^'\"`/\-%s]++" % re.escape(delim[:1]), b""
    else:
        body = rb"[^']*+(?:''[^']*+)*+"
        dq = rb'"(?:[^"]|"")*+"'
        plain = rb"[^'\"`/\-$eE%s]++|[eE](?!')" % re.escape(delim[:1])
        dollar = (rb"|[eE]'[^'\\]*+(?:(?:\\[\s\S]|'')[^'\\]*+)*+'|\$(\w*+)\$[\s\S]*?\$\1\$"
                  rb"|\$(?!\w*+\$)")
    first, rest = re.escape(delim[:1]), re.escape(delim[1:])
    stmt = (rb"(?:" + plain + rb"|'" + body + rb"'|" + dq + rb"|`(?:[^`]|``)*+`|--[^\n]*+\n"
            rb"|/\*[\s\S]*?\*/|-(?!-)|/(?!\*)" + dollar
            + (rb"|" + first + rb"(?!" + rest + rb")" if rest else b"") + rb")*+")
    ws = rb"[ \t\r\n]*+"
    atom = (ws + rb"(?:_binary" + ws + rb"(?P<b>'" + body + rb"')|(?:_\w++" + ws + rb")?(?P<s>'"
            + body + rb"')|(?P<n>-?\d++(?![.eE]))|(?P<z>(?i:NULL))"
            rb"|(?P<f>-?(?:\d++\.\d*+|\.\d++)(?:[eE][-+]?\d++)?|-?\d++[eE][-+]?\d++)|(?P<h>0x[0-9A-Fa-f]*+)|[xX](?P<x>'[0-9A-Fa-f]*+')"
            rb"|(?P<d>" + (dq if backslash else rb"(?!)") + rb"))")
    partial = ws + rb"(?:(?:_\w++" + ws + rb"|[eE])?'" + body + rb"(?:\\|')?|\"[^\"]*+)\s*+\Z"
    return _Rx(re.compile(atom + ws + rb"[,)]"), re.compile(atom),
               re.compile(stmt), re.compile(partial))


def _unquote(ident: bytes) -> str:
    if ident[:1] in (b"`", b'"', b"["):
        q = ident[:1]
        ident = ident[1:-1].replace(q + q, q) if q != b"[" else ident[1:-1]
    return ident.decode("utf-8", "replace")


def _name(raw: bytes) -> str:
    return ".".join(_unquote(m.group()) for m in _ID_RX.finditer(raw))


_PY_ESC = re.compile(rb"(?:[^\\]++|\\[\\'\"nrtb])*+")


def _mysql_unescape(raw: bytes) -> bytes:
    # Python's escape decoder (C) agrees with MySQL on \\ \' \" \n \r \t \b: ten times faster
    # than a regex callback, and mysqldump writes only those (and \0, \Z, which go the slow way)
    if b"''" not in raw and _PY_ESC.fullmatch(raw) is not None:
        return codecs.escape_decode(raw)[0]  # type: ignore[attr-defined]
    return _ESC.sub(lambda m: _MYSQL_ESC.get(m.group(1), m.group(1)) if m.group(1) is not None
                    else b"'", raw)


def _c_unescape(raw: bytes) -> bytes:
    """COPY text fields and E'...' strings: \\n \\t \\ooo \\xHH, anything else stands for itself."""
    def one(m: re.Match[bytes]) -> bytes:
        if m.group(1):
            return bytes([int(m.group(1), 8) & 0xFF])
        if m.group(2):
            return bytes([int(m.group(2), 16)])
        return _C_ESC.get(m.group(3), m.group(3))
    return _COPY_ESC.sub(one, raw)


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _codec(name: str) -> str:
    name = _ENCODINGS.get(name.lower(), name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _convert(b_: bytes | None, f: bytes | None, h: bytes | None, x: bytes | None,
             d: bytes | None, encoding: str) -> Value:
    """The values the hot loop leaves: _binary'', float, 0x.., X'..', MySQL "..."."""
    if f:
        return float(f)
    if b_:
        return _mysql_unescape(b_[1:-1])
    if h:
        return bytes.fromhex(("0" if len(h) % 2 else "") + h[2:].decode())   # MySQL: 0xABC
    if x:
        return bytes.fromhex(("0" if len(x) % 2 else "") + x[1:-1].decode())
    return _mysql_unescape((d or b'""')[1:-1]).replace(b'""', b'"').decode(encoding, "replace")


def _copy_converter(sqltype: str, encoding: str) -> Callable[[bytes], Value]:
    base = sqltype.split()[0] if sqltype else ""

    def text(f: bytes) -> Value:
        if f == b"\\N":
            return None
        return (_c_unescape(f) if b"\\" in f else f).decode(encoding, "replace")

    if base in ("smallint", "integer", "int", "bigint", "int2", "int4", "int8", "serial",
                "bigserial", "smallserial", "tinyint", "mediumint"):
        return lambda f: None if f == b"\\N" else int(f)
    if base in ("real", "double", "float4", "float8", "numeric", "decimal", "float"):
        return lambda f: None if f == b"\\N" else float(f)
    if base in ("boolean", "bool"):
        return lambda f: None if f == b"\\N" else f == b"t"
    if base == "bytea":
        return lambda f: None if f == b"\\N" else bytes.fromhex(_c_unescape(f)[2:].decode())
    return text


def _columns(body: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Column names and types from the inside of CREATE TABLE (...), constraints left out."""
    parts, depth, cur = [], 0, b""
    for m in _PARTS.finditer(body):
        tok = m.group()
        if tok == b"(":
            depth += 1
        elif tok == b")":
            depth -= 1
            if depth < 0:
                break
        elif tok == b"," and depth == 0:
            parts.append(cur)
            cur = b""
            continue
        cur += tok
    parts.append(cur)
    cols, types = [], []
    for part in (p.strip() for p in parts):
        m = _ID_RX.match(part)
        if not part or m is None or (_CONSTRAINT.match(part) and part[:1] not in b'`"['):
            continue
        t = _TYPE.match(part, m.end())
        cols.append(_unquote(m.group()))
        types.append(t.group(1).decode().lower() if t else "")
    return tuple(cols), tuple(types)


_FUNC = re.compile(rb"(?i)\s*+(replace|char|unistr|cast)\s*+\(")
_ESTR = re.compile(rb"\s*+[eE]'([^'\\]*+(?:(?:\\[\s\S]|'')[^'\\]*+)*+)'")
_WORD = re.compile(rb"(?i)\s*+(true|false|default)\b")
_CAST = re.compile(rb"(?i)\s*+(?:::\s*+[\w\" .]+(?:\([\d, ]*\))?(?:\[\])?|AS\s++[\w ]+"
                   rb"(?:\([\d, ]*\))?)?")


def _call(fn: bytes, args: list[Any]) -> Value:
    if fn == b"replace" and len(args) == 3 and all(isinstance(a, str) for a in args):
        return args[0].replace(args[1], args[2])
    if fn == b"char":
        return "".join(chr(a) for a in args)
    if fn == b"unistr" and len(args) == 1:
        return re.sub(r"\\(\\|u[0-9a-fA-F]{4}|\+[0-9a-fA-F]{6}|U[0-9a-fA-F]{8}|[0-9a-fA-F]{4})",
                      lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1).lstrip(
                          "uU+"), 16)), args[0])
    if fn == b"cast" and len(args) == 1:
        return args[0]
    raise ValueError(f"unsupported SQL function {fn.decode()}()")
