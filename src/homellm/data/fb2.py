"""FictionBook 2 (.fb2, .fb2.zip): title and authors from ``<title-info>``, body text as paragraphs.

FB2 files come from anywhere, so they are parsed with defusedxml: entity declarations (the
"billion laughs" family) and external references are refused instead of expanded. Notes bodies
(``<body name="notes">``), note references (``<a type="note">``), images and ``<binary>``
attachments are left out; poems keep their line breaks.
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as SafeET

from homellm.data.textcodec import decode_bytes

_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_NOTE_BODIES = {"notes", "comments", "footnotes"}
_SKIP = {"image", "binary", "stylesheet"}
# blocks whose text is one paragraph each; everything else is a container we walk through
_LEAF = {"p", "v", "subtitle", "text-author", "td", "th"}
_SPACES = re.compile(r"\s+")


class Fb2Error(ValueError):
    """The file is not a readable FB2 book; the message says why (and where, when XML knows)."""


@dataclass
class Fb2Book:
    title: str
    author: str
    text: str
    encoding: str
    meta: dict[str, str] = field(default_factory=dict)


def parse_fb2(data: bytes) -> Fb2Book:
    root, encoding = _parse(data)
    info = _child(_child(root, "description"), "title-info")
    title = _flat(_child(info, "book-title"))
    authors = [_author_name(a) for a in _children(info, "author")]
    meta = {}
    lang = _flat(_child(info, "lang"))
    if lang:
        meta["lang"] = lang
    paragraphs: list[str] = []
    bodies = _children(root, "body")
    if not bodies:
        raise Fb2Error("no <body> element: not a FictionBook document")
    for body in bodies:
        if (body.get("name") or "").strip().lower() in _NOTE_BODIES:
            continue
        _walk(body, paragraphs)
    return Fb2Book(title=title, author=", ".join(a for a in authors if a),
                   text="\n\n".join(p for p in paragraphs if p), encoding=encoding, meta=meta)


def _parse(data: bytes) -> tuple[Element, str]:
    """Parse honouring the XML declaration; if the bytes contradict it, detect the encoding."""
    m = _DECLARED.match(data[:200].lstrip(b"\xef\xbb\xbf"))
    declared = m.group(1).decode("ascii").lower() if m else "utf-8"
    try:
        return _fromstring(data), declared
    except ET.ParseError as first:
        try:
            text, encoding, _ = decode_bytes(data)
        except ValueError:
            raise Fb2Error(f"not well-formed XML ({first})") from None
        if _codec(encoding) == _codec(declared):
            raise Fb2Error(f"not well-formed XML ({first})") from None
        # the declaration lies (a cp1251 file that says utf-8, say): parse the decoded text
        text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text.lstrip("\ufeff"))
        try:
            return _fromstring(text), encoding
        except ET.ParseError as e:
            raise Fb2Error(f"not well-formed XML ({e})") from None


def _codec(name: str) -> str:
    try:
        return codecs.lookup(name).name.removesuffix("-sig")
    except LookupError:
        return name


def _fromstring(data: bytes | str) -> Element:
    try:
        return SafeET.fromstring(data)
    except defusedxml.DefusedXmlException as e:
        raise Fb2Error(f"refused: the XML uses {type(e).__name__} (unsafe for untrusted files)"
                       ) from None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(parent: Element | None, name: str) -> list[Element]:
    return [] if parent is None else [c for c in parent if _local(c.tag) == name]


def _child(parent: Element | None, name: str) -> Element | None:
    found = _children(parent, name)
    return found[0] if found else None


def _flat(el: Element | None) -> str:
    return "" if el is None else _SPACES.sub(" ", "".join(el.itertext())).strip()


def _author_name(author: Element) -> str:
    parts = [_flat(_child(author, n)) for n in ("first-name", "middle-name", "last-name")]
    name = " ".join(p for p in parts if p)
    return name or _flat(_child(author, "nickname"))


def _inline(el: Element) -> str:
    """The text of a paragraph without note references and images, spaces collapsed."""
    out = [el.text or ""]
    for child in el:
        tag = _local(child.tag)
        is_note = tag == "a" and (child.get("type") or "").lower() == "note"
        if tag not in _SKIP and not is_note:
            out.append(_inline(child))
        out.append(child.tail or "")
    return "".join(out)


def _walk(el: Element, out: list[str]) -> None:
    for child in el:
        tag = _local(child.tag)
        if tag in _SKIP:
            continue
        if tag in _LEAF:
            out.append(_SPACES.sub(" ", _inline(child)).strip())
        elif tag == "stanza":
            verse = [_SPACES.sub(" ", _inline(v)).strip() for v in child.iter()
                     if _local(v.tag) == "v"]
            out.append("\n".join(v for v in verse if v))
        else:
            _walk(child, out)
