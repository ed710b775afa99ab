"""Cleaning of running book text: pure functions, one pass over a whole book.

Order matters: page furniture (running headers, page numbers) goes before hyphenation is
joined, because a page break often falls inside a hyphenated word ("пере-", page number, header,
"ход"); whitespace is normalised last so that the removed lines leave no gaps behind.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, Literal

YoMode = Literal["keep", "e"]


@dataclass
class CleanStats:
    chars_in: int = 0
    chars_out: int = 0
    control_chars: int = 0       # control and invisible format characters removed
    odd_spaces: int = 0          # no-break and other Unicode spaces made plain
    page_numbers: int = 0        # bare page-number lines removed
    header_lines: int = 0        # running header/footer lines removed
    hyphens_joined: int = 0      # words broken across a line end, joined (real hyphens kept)
    blank_runs: int = 0          # runs of more than two blank lines shortened
    yo_replaced: int = 0         # "ё" → "е" (only with yo="e")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# invisible characters that only carry typesetting (soft hyphen, zero-width space, BOM, word
# joiner); other format characters (joiners, direction marks) can carry meaning and stay
_INVISIBLE = "\u00ad\u200b\u2060\ufeff"
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")


# C0 and C1 controls except tab, newline and form feed (kept until page breaks are used)
_CONTROLS = re.compile(f"[\x00-\x08\x0b\x0d-\x1f\x7f-\x9f{_INVISIBLE}]")


def _strip_controls(text: str, stats: CleanStats) -> str:
    text, removed = _CONTROLS.subn("", text)
    stats.control_chars += removed
    return text


# --------------------------------------------------------------------------- page furniture

_PAGE_NUMBER = re.compile(r"[-–—\[(]?\s*(?:стр\.?|с\.|page|p\.)?\s*(\d{1,4})\s*[-–—\])]?",
                          re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_HAS_WORD = re.compile(r"[^\W\d_]")


def _regular(positions: list[int], *, min_gap: int = 8) -> bool:
    """Do these line numbers recur at page-like intervals (a page is 8+ lines, fairly even)?"""
    gaps = [b - a for a, b in pairwise(positions)]
    if not gaps:
        return False
    median = statistics.median(gaps)
    if median < min_gap:
        return False
    # typeset pages differ by a line or two; chapters, verses and refrains differ far more
    even = sum(1 for g in gaps if 0.75 * median <= g <= 1.33 * median)
    return even >= 0.7 * len(gaps)


def _page_number_lines(lines: list[str]) -> set[int]:
    """Indexes of lines that are page numbers: a rising run of bare numbers at page intervals.

    A bare number alone is not enough (chapter and verse numbers look the same), so we keep the
    longest chain whose values rise by 1..3 from one to the next, and only when it recurs at
    page-like intervals.
    """
    found = [(i, int(m.group(1))) for i, line in enumerate(lines)
             if (m := _PAGE_NUMBER.fullmatch(line.strip()))]
    if len(found) < 3:
        return set()
    # longest rising chain (look back a bounded number of candidates: pages are near each other)
    best_len = [1] * len(found)
    prev = [-1] * len(found)
    for j in range(len(found)):
        for k in range(max(0, j - 50), j):
            if 1 <= found[j][1] - found[k][1] <= 3 and best_len[k] + 1 > best_len[j]:
                best_len[j], prev[j] = best_len[k] + 1, k
    j = max(range(len(found)), key=best_len.__getitem__)
    chain = []
    while j != -1:
        chain.append(found[j][0])
        j = prev[j]
    chain.reverse()
    if len(chain) < 3 or not _regular(chain):
        return set()
    return set(chain)


def _header_lines(lines: list[str], boundaries: set[int]) -> set[int]:
    """Indexes of running headers/footers: short lines repeated at page-like intervals.

    Lines compare with their digits masked, so "12 Книга о вере" and "14 Книга о вере" are one
    header. Lines without a letter ("* * *", "---") are section marks and stay. Where the page
    breaks are known (page numbers, form feeds), a header must also sit next to them.
    """
    near = {i + d for i in boundaries for d in range(-3, 4)} if len(boundaries) >= 3 else None
    where: dict[str, list[int]] = defaultdict(list)
    for i, line in enumerate(lines):
        s = line.strip()
        if s and len(s) <= 100 and _HAS_WORD.search(s):
            where[_DIGITS.sub("#", s.casefold())].append(i)
    drop: set[int] = set()
    for positions in where.values():
        if len(positions) >= 3 and _regular(positions, min_gap=15) and (
                near is None or sum(p in near for p in positions) >= 0.7 * len(positions)):
            drop.update(positions)
    return drop


def _drop_page_furniture(text: str, stats: CleanStats) -> str:
    lines = text.split("\n")
    pages = _page_number_lines(lines)
    feeds = {i for i, line in enumerate(lines) if "\f" in line}
    headers = _header_lines(lines, pages | feeds) - pages
    stats.page_numbers += len(pages)
    stats.header_lines += len(headers)
    if not pages and not headers:
        return text
    return "\n".join(line for i, line in enumerate(lines) if i not in pages and i not in headers)


# --------------------------------------------------------------------------- hyphenation

# second halves that make a real hyphenated word even when the hyphen falls at a line end
_PARTICLES = {"то", "либо", "нибудь", "таки", "ка", "де", "с"}
_PREFIXES = {"кое", "кой"}
_PAIRS = {("из", "за"), ("из", "под"), ("по", "над")}
_BROKEN = re.compile(r"(\w+)[-\u2010][ \t]*\n(?:[ \t]*\n)*[ \t]*([^\W\d_]\w*)")


def _join_hyphenation(text: str, stats: CleanStats) -> str:
    """Join words hyphenated at a line end ("пере-\\nход" → "переход").

    Only a lowercase continuation counts: a paragraph never ends in "слово-" before one that
    starts lowercase, so this may look across the blank lines a removed page break left.
    """
    def join(m: re.Match[str]) -> str:
        head, tail = m.group(1), m.group(2)
        if not tail[0].islower() or head[-1].isdigit():
            return m.group()
        stats.hyphens_joined += 1
        low_head = head.lower()
        if (tail.lower() in _PARTICLES or low_head in _PREFIXES
                or (low_head, tail.lower()) in _PAIRS):
            return f"{head}-{tail}"
        return head + tail
    return _BROKEN.sub(join, text)


# --------------------------------------------------------------------------- whitespace

_SPACE_RUN = re.compile(r"[ \t]*\t[ \t]*| {2,}")
_BLANK_RUN = re.compile(r"\n{4,}")


def _normalise_whitespace(text: str, stats: CleanStats) -> str:
    lines = []
    for line in text.split("\n"):
        line = line.lstrip(" ").rstrip(" \t")  # indentation by spaces is typesetting
        lines.append(_SPACE_RUN.sub(lambda m: "\t" if "\t" in m.group() else " ", line))
    text = "\n".join(lines)
    stats.blank_runs += len(_BLANK_RUN.findall(text))
    return _BLANK_RUN.sub("\n\n\n", text).strip("\n")


def clean_book_text(text: str, *, yo: YoMode = "keep") -> tuple[str, CleanStats]:
    """NFC, no control characters, no page furniture, joined hyphenation, tidy whitespace.

    ``yo="e"`` writes "ё" as "е" (and "Ё" as "Е"); by default "ё" is kept as it is.
    """
    if yo not in ("keep", "e"):
        raise ValueError(f"yo must be 'keep' or 'e', not {yo!r}")
    stats = CleanStats(chars_in=len(text))
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub("[\v\u2028\u2029]", "\n", text)  # line separators
    # a soft hyphen at a line end is an explicit break point inside a word
    text, joined = re.subn("\u00ad[ \t]*\n[ \t]*", "", text)
    stats.hyphens_joined += joined
    stats.odd_spaces = len(_ODD_SPACES.findall(text))
    text = _ODD_SPACES.sub(" ", text)
    text = _strip_controls(text, stats)
    text = _drop_page_furniture(text, stats)
    text = text.replace("\f", "\n")  # form feeds marked page breaks for the step above
    text = _join_hyphenation(text, stats)
    text = _normalise_whitespace(text, stats)
    if yo == "e":
        stats.yo_replaced = text.count("ё") + text.count("Ё")
        text = text.replace("ё", "е").replace("Ё", "Е")
    stats.chars_out = len(text)
    return text, stats
