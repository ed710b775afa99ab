"""EPUB (2 and 3): the spine's XHTML documents in reading order, title and authors from the OPF.

The package files (container.xml, the OPF) are XML and parsed with defusedxml. Chapters are
parsed with the standard library's HTMLParser instead of an XML parser: it knows every HTML
named entity (``&nbsp;`` is everywhere in EPUBs and undefined for an XML parser without the
XHTML DTD), tolerates the broken markup real books ship with, and never expands DTD entities.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import unquote
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

_MAX_MEMBER = 256 * 1024 * 1024  # a chapter bigger than this is a zip bomb, not a book
_BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "section",
          "article", "tr", "dt", "dd", "pre", "figcaption", "table", "ul", "ol", "hr", "br"}
_SKIP = {"head", "script", "style", "nav", "svg", "math", "rt", "rp"}
_NOTE_TYPES = {"footnote", "endnote", "rearnote", "note", "noteref", "pagebreak"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source"}
_SPACES = re.compile(r"[ \t\r\n\f]+")
_CHAPTER_TYPES = {"application/xhtml+xml", "text/html", "application/x-dtbook+xml"}


class EpubError(ValueError):
    """The file is not a readable EPUB; the message says why."""


@dataclass
class EpubBook:
    title: str
    author: str
    text: str
    meta: dict[str, object] = field(default_factory=dict)


def parse_epub(path: object) -> EpubBook:
    try:
        archive = zipfile.ZipFile(path)  # type: ignore[arg-type]
    except zipfile.BadZipFile:
        raise EpubError("not an EPUB: not a zip archive") from None
    with archive:
        opf_path = _find_opf(archive)
        opf = _xml(archive, opf_path)
        base = posixpath.dirname(opf_path)
        title, authors, lang = _metadata(opf)
        chapters = []
        for href in _spine(opf, base):
            if href not in archive.namelist():
                raise EpubError(f"the spine names {href}, which is not in the archive")
            chapters.append(chapter_text(_decode(_read(archive, href))))
    meta: dict[str, object] = {"chapters": len(chapters)}
    if lang:
        meta["lang"] = lang
    return EpubBook(title=title, author=", ".join(authors),
                    text="\n\n".join(c for c in chapters if c), meta=meta)


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    if archive.getinfo(name).file_size > _MAX_MEMBER:
        raise EpubError(f"{name} unpacks to more than {_MAX_MEMBER >> 20} MiB")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC errors, truncated members
        raise EpubError(f"{name}: damaged archive member ({e})") from None


def _decode(data: bytes) -> str:
    # EPUB allows only UTF-8 and UTF-16 (with a BOM) for content documents
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8-sig", "replace")


def _xml(archive: zipfile.ZipFile, name: str) -> Element:
    try:
        return SafeET.fromstring(_read(archive, name))
    except ParseError as e:
        raise EpubError(f"{name}: not well-formed XML ({e})") from None
    except defusedxml.DefusedXmlException as e:
        raise EpubError(f"{name}: refused: the XML uses {type(e).__name__}") from None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _find_opf(archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    if "META-INF/container.xml" in names:
        for el in _xml(archive, "META-INF/container.xml").iter():
            if _local(el.tag) == "rootfile" and el.get("full-path") in names:
                return str(el.get("full-path"))
    opfs = sorted(n for n in names if n.lower().endswith(".opf"))
    if not opfs:
        raise EpubError("not an EPUB: no OPF package document (META-INF/container.xml "
                        "names none and the archive has no .opf file)")
    return opfs[0]


def _metadata(opf: Element) -> tuple[str, list[str], str]:
    title, authors, lang = "", [], ""
    for el in opf.iter():
        tag, text = _local(el.tag), _SPACES.sub(" ", "".join(el.itertext())).strip()
        if tag == "title" and not title:
            title = text
        elif tag == "creator" and text:
            authors.append(text)
        elif tag == "language" and not lang:
            lang = text
    return title, authors, lang


def _spine(opf: Element, base: str) -> list[str]:
    """Archive paths of the spine's linear XHTML documents, in reading order.

    ``linear="no"`` items (notes, pop-ups) and the EPUB 3 navigation document (a table of
    contents) are not reading text.
    """
    manifest: dict[str, tuple[str, str, str]] = {}
    spine: Element | None = None
    for el in opf.iter():
        tag = _local(el.tag)
        if tag == "item" and el.get("id") and el.get("href"):
            manifest[str(el.get("id"))] = (str(el.get("href")), el.get("media-type") or "",
                                           el.get("properties") or "")
        elif tag == "spine":
            spine = el
    if spine is None:
        raise EpubError("the OPF has no <spine>: reading order unknown")
    hrefs = []
    for ref in spine:
        if _local(ref.tag) != "itemref" or (ref.get("linear") or "yes").lower() == "no":
            continue
        idref = ref.get("idref") or ""
        if idref not in manifest:
            raise EpubError(f"the spine names item {idref!r}, which the manifest lacks")
        href, media, props = manifest[idref]
        if media not in _CHAPTER_TYPES or "nav" in props.split():
            continue
        path = posixpath.normpath(posixpath.join(base, unquote(href.split("#", 1)[0])))
        hrefs.append(path)
    return hrefs


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._current: list[str] = []
        self._skip: list[str] = []  # the open tags that started a skipped region

    def _end_paragraph(self) -> None:
        text = _SPACES.sub(" ", "".join(self._current)).strip()
        if text:
            self.paragraphs.append(text)
        self._current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            if tag in _BLOCK and not self._skip:
                self._end_paragraph()
            return
        kinds = set()
        for name, value in attrs:
            if name in ("epub:type", "role") and value:
                kinds.update(v.removeprefix("doc-") for v in value.split())
        if self._skip or tag in _SKIP or kinds & _NOTE_TYPES:
            self._skip.append(tag)
            return
        if tag in _BLOCK:
            self._end_paragraph()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK and not self._skip:
            self._end_paragraph()

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            # close the skipped region at the tag that opened it, tolerating sloppy nesting
            if tag in self._skip:
                while self._skip and self._skip.pop() != tag:
                    pass
            return
        if tag in _BLOCK:
            self._end_paragraph()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._current.append(data)


def chapter_text(html: str) -> str:
    """The paragraphs of one XHTML document, separated by blank lines."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    collector._end_paragraph()
    return "\n\n".join(collector.paragraphs)
