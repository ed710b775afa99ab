"""Readers for books and text files: every input becomes ``Document`` records.

``iter_documents(path)`` picks the reader by suffix: .txt, .md (also .gz), .fb2 (.fb2.zip),
.epub, .jsonl (.gz), .csv/.tsv (.gz), .parquet (needs pyarrow). Every text is decoded with
detected encoding and has its mojibake repaired; ``meta`` says how (format, encoding,
repaired = lines repaired). Cleaning is separate (``textclean.clean_book_text``): readers keep
the text as the source has it. A file that cannot be read raises one ``HomellmError`` naming
it; skipping bad files is the caller's choice.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from homellm.data.epub import EpubError, parse_epub
from homellm.data.fb2 import Fb2Error, parse_fb2
from homellm.data.records import Document
from homellm.data.textcodec import (
    decode_bytes,
    detect_encoding,
    reading_codec,
    repair_mojibake,
)
from homellm.errors import HomellmError

_BOOKS = {".txt", ".text", ".md", ".markdown"}
_TABLES = {".jsonl", ".ndjson", ".csv", ".tsv"}
SUPPORTED_SUFFIXES = (*sorted(_BOOKS | _TABLES), ".fb2", ".fb2.zip", ".epub", ".parquet")
_HEAD = 1 << 20  # bytes looked at to detect the encoding of a streamed file
_MAX_UNPACKED = 256 << 20  # an archived book bigger than this is a zip bomb


class DataReadError(HomellmError):
    """An input file could not be read as the format its name says."""


def file_format(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped) for a path: "book.txt.gz" → (".txt", True)."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes.pop()
    if suffixes[-2:] == [".fb2", ".zip"]:
        return ".fb2.zip", False
    return (suffixes[-1] if suffixes else ""), gz


def is_supported(path: Path) -> bool:
    fmt, gz = file_format(path)
    return fmt in _BOOKS | _TABLES or (not gz and fmt in {".fb2", ".fb2.zip", ".epub",
                                                           ".parquet"})


def doc_id(path: Path, position: int) -> str:
    """Stable id: the same file (by absolute path) and position give the same id every run."""
    digest = hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()
    return f"{digest}-{position}"


def iter_documents(path: Path, *, text_field: str = "text") -> Iterator[Document]:
    """The documents in one input file; ``text_field`` names the JSONL field / CSV column."""
    path = Path(path)
    fmt, gz = file_format(path)
    if not is_supported(path):
        raise DataReadError(f"{path}: unsupported file type {fmt or '(no suffix)'!r} "
                            f"(supported: {', '.join(SUPPORTED_SUFFIXES)}; .gz for text and "
                            "tables)")
    try:
        if fmt in _BOOKS:
            yield from _read_text(path, fmt, gz)
        elif fmt in (".fb2", ".fb2.zip"):
            yield _read_fb2(path, fmt)
        elif fmt == ".epub":
            yield _read_epub(path)
        elif fmt in (".jsonl", ".ndjson"):
            yield from _read_jsonl(path, gz, text_field)
        elif fmt in (".csv", ".tsv"):
            yield from _read_csv(path, gz, text_field, fmt)
        else:
            yield from _read_parquet(path, text_field)
    except OSError as e:  # missing, unreadable, a truncated .gz
        raise DataReadError(f"{path}: cannot read: {e.strerror or e}") from None


def _document(path: Path, position: int, text: str, fmt: str, encoding: str, *,
              title: str = "", author: str = "", **meta: Any) -> Document:
    text, repaired = repair_mojibake(text.replace("\r\n", "\n").replace("\r", "\n"))
    title, _ = repair_mojibake(title)
    author, _ = repair_mojibake(author)
    return Document(id=doc_id(path, position), source=str(path), text=text, title=title,
                    author=author, meta={"format": fmt.lstrip("."), "encoding": encoding,
                                         "repaired": repaired, **meta})


def _read_bytes(path: Path, gz: bool) -> bytes:
    if not gz:
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zipfile.error) as e:
        raise DataReadError(f"{path}: damaged gzip data ({e})") from None


# ----------------------------------------------------------------------------- books

def _read_text(path: Path, fmt: str, gz: bool) -> Iterator[Document]:
    try:
        text, encoding, undecodable = decode_bytes(_read_bytes(path, gz))
    except ValueError as e:
        raise DataReadError(f"{path}: {e}") from None
    if not text.strip():
        return
    title = path.name.split(".")[0]
    if fmt in (".md", ".markdown"):
        heading = next((ln for ln in text.splitlines() if ln.startswith("# ")), "")
        title = heading[2:].strip() or title
    extra = {"undecodable": undecodable} if undecodable else {}
    yield _document(path, 0, text, fmt, encoding, title=title, **extra)


def _read_fb2(path: Path, fmt: str) -> Document:
    data = path.read_bytes()
    if fmt == ".fb2.zip":
        data = _single_fb2(path, data)
    try:
        book = parse_fb2(data)
    except Fb2Error as e:
        raise DataReadError(f"{path}: {e}") from None
    return _document(path, 0, book.text, "fb2", book.encoding, title=book.title,
                     author=book.author, **book.meta)


def _single_fb2(path: Path, data: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.lower().endswith(".fb2")]
            if len(names) != 1:
                raise DataReadError(f"{path}: expected one .fb2 inside, found {len(names)}")
            if archive.getinfo(names[0]).file_size > _MAX_UNPACKED:
                raise DataReadError(f"{path}: {names[0]} unpacks to more than "
                                    f"{_MAX_UNPACKED >> 20} MiB")
            return archive.read(names[0])
    except zipfile.BadZipFile:
        raise DataReadError(f"{path}: not a zip archive") from None


def _read_epub(path: Path) -> Document:
    try:
        book = parse_epub(path)
    except EpubError as e:
        raise DataReadError(f"{path}: {e}") from None
    return _document(path, 0, book.text, "epub", "utf-8", title=book.title,
                     author=book.author, **book.meta)


# ----------------------------------------------------------------------------- tables

def _open_text(path: Path, gz: bool) -> tuple[IO[str], str]:
    """A text stream over a possibly large file, its encoding detected from the first MiB."""
    raw: IO[bytes] = gzip.open(path, "rb") if gz else path.open("rb")  # noqa: SIM115 (returned)
    head = raw.read(_HEAD)
    encoding = detect_encoding(head, complete=len(head) < _HEAD)
    if encoding is None:
        raw.close()
        raise DataReadError(f"{path}: cannot tell the text encoding (a binary file?)")
    raw.seek(0)
    stream = io.TextIOWrapper(raw, encoding=reading_codec(encoding), errors="replace",
                              newline="")
    return stream, encoding


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _read_jsonl(path: Path, gz: bool, text_field: str) -> Iterator[Document]:
    stream, encoding = _open_text(path, gz)
    with stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataReadError(f"{path}:{number}: not JSON ({e.msg}, column {e.colno})"
                                    ) from None
            if not isinstance(row, dict) or text_field not in row:
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise DataReadError(f"{path}:{number}: no field {text_field!r} (has: {keys})")
            text = row[text_field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataReadError(f"{path}:{number}: field {text_field!r} is "
                                    f"{type(text).__name__}, not a string")
            if text.strip():
                yield _document(path, number, text, "jsonl", encoding, line=number,
                                title=_string(row.get("title")),
                                author=_string(row.get("author")))


def _read_csv(path: Path, gz: bool, column: str, fmt: str) -> Iterator[Document]:
    # one cell can hold a whole book; the default limit (128 KiB) is for spreadsheets
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    stream, encoding = _open_text(path, gz)
    with stream:
        sample = stream.read(64 * 1024)
        stream.seek(0)
        if fmt == ".tsv":
            dialect: Any = csv.excel_tab
        else:
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
            except csv.Error:
                dialect = csv.excel
        reader = csv.DictReader(stream, dialect=dialect)
        try:
            fields = reader.fieldnames or []
            if column not in fields:
                raise DataReadError(f"{path}: no column {column!r} (has: {', '.join(fields)})")
            for row in reader:
                text = row.get(column) or ""
                if text.strip():
                    yield _document(path, reader.line_num, text, fmt, encoding,
                                    row=reader.line_num,
                                    title=_string(row.get("title")),
                                    author=_string(row.get("author")))
        except csv.Error as e:
            raise DataReadError(f"{path}:{reader.line_num}: {e}") from None


def _read_parquet(path: Path, column: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataReadError(f"{path}: reading Parquet needs pyarrow, which is not installed "
                            "(pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
        if column not in names:
            raise DataReadError(f"{path}: no column {column!r} (has: {', '.join(names)})")
        wanted = [column] + [c for c in ("title", "author") if c in names and c != column]
        row = 0
        for batch in table.iter_batches(columns=wanted, batch_size=1024):
            texts = batch.column(column).to_pylist()
            none = [None] * len(texts)
            titles = batch.column("title").to_pylist() if "title" in wanted else none
            authors = batch.column("author").to_pylist() if "author" in wanted else none
            for text, title, author in zip(texts, titles, authors, strict=True):
                row += 1
                if isinstance(text, str) and text.strip():
                    yield _document(path, row, text, "parquet", "utf-8", row=row,
                                    title=_string(title), author=_string(author))
    except DataReadError:
        raise
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError) share no base we can name
        raise DataReadError(f"{path}: not a readable Parquet file ({e})") from None
