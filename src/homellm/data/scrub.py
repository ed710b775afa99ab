"""Replace e-mail addresses, URLs, Russian identity and payment numbers (``pii_ru``) and phone
numbers with typed placeholders: ``<email>``, ``<url>``, ``<card>``, ``<iban>``, ``<account>``,
``<snils>``, ``<inn>``, ``<passport>``, ``<phone>``.

On by default for dialogues (people write their contacts into chats), off for books. The
patterns are narrow on purpose: a phone needs the shape of one (a +country code, or a Russian
8/+7 prefix with a 3-digit code, or a 3-2-2 local number written with hyphens), so dates
(12.03.2024, 2024-03-12), times (18:30), prices (1 500 руб., $19.99), years and counts stay.
E-mails go first (their domain is not a URL), then URLs, then the checksummed numbers (a card or
SNILS would otherwise look like a phone to the looser phone pattern), then phones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from homellm.data import pii_ru
from homellm.data.records import Conversation, Record, Turn

KINDS = ("email", "url", *pii_ru.KINDS, "phone")
PLACEHOLDERS = {kind: f"<{kind}>" for kind in KINDS}

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w@])")

# bare domains only with a TLD seen in Russian chats; "т.е.", "и т.д." have no such ending
_TLDS = ("ru|рф|su|com|org|net|info|io|me|by|kz|ua|uz|рус|online|site|biz|edu|gov|tv|"
         "pro|club|shop|app|dev")
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"'«»]+"
    rf"|(?<![\w@.-])(?:[\w-]+\.)+(?:{_TLDS})\b(?:/[^\s<>\"'«»]*)?(?![\w@-])",
    re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}…"  # sentence punctuation after a link is not part of it

_SEP = r"[ \-.]?"
_PHONE = re.compile(
    r"(?<![\w+.,:/-])(?:"
    # Russian: +7 / 7 / 8, a 3-digit code (maybe in brackets), then 3-2-2
    rf"(?:\+7|\b[78])[ \-]?(?:\(\d{{3}}\)|\d{{3}}){_SEP}\d{{3}}{_SEP}\d{{2}}{_SEP}\d{{2}}"
    # international: a + country code and 7 to 12 more digits in groups
    r"|\+(?!7)\d{1,3}[ \-]?(?:\(\d{1,4}\)[ \-]?)?\d{2,4}(?:[ \-]?\d{2,4}){1,4}"
    # local city numbers written 123-45-67
    r"|\b\d{3}-\d{2}-\d{2}\b"
    r")(?![\w.,:/-]?\d)")


def _scrub_urls(text: str) -> tuple[str, int]:
    count = 0

    def sub(match: re.Match[str]) -> str:
        nonlocal count
        url = stripped = match.group()
        while stripped and stripped[-1] in _URL_TAIL:
            # a closing bracket belongs to the link when it closes one opened inside it
            if stripped[-1] == ")" and stripped.count("(") >= stripped.count(")"):
                break
            stripped = stripped[:-1]
        count += 1
        return PLACEHOLDERS["url"] + url[len(stripped):]

    return _URL.sub(sub, text), count


def _phone_digits_ok(match: re.Match[str]) -> bool:
    digits = sum(ch.isdigit() for ch in match.group())
    return digits == 7 or 10 <= digits <= 15


def scrub_text(text: str, kinds: Iterable[str] = KINDS) -> tuple[str, Counter[str]]:
    """``text`` with each kind replaced by its placeholder, and how many of each were found."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown scrub kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    counts: Counter[str] = Counter()
    if "email" in wanted and "@" in text:
        text, counts["email"] = _EMAIL.subn(PLACEHOLDERS["email"], text)
    if "url" in wanted and "." in text:
        text, counts["url"] = _scrub_urls(text)
    if any(ch.isdigit() for ch in text):
        for kind in pii_ru.KINDS:
            if kind in wanted:
                text, counts[kind] = pii_ru.scrub_kind(text, kind, PLACEHOLDERS[kind])
    if "phone" in wanted:
        found = 0

        def phone(match: re.Match[str]) -> str:
            nonlocal found
            if not _phone_digits_ok(match):
                return match.group()
            found += 1
            return PLACEHOLDERS["phone"]

        text = _PHONE.sub(phone, text)
        counts["phone"] = found
    return text, +counts


def scrub_record(record: Record, kinds: Iterable[str] = KINDS) -> tuple[Record, Counter[str]]:
    """A copy of ``record`` with its text (every turn of a conversation) scrubbed."""
    kinds = tuple(kinds)
    if isinstance(record, Conversation):
        total: Counter[str] = Counter()
        turns = []
        for turn in record.turns:
            text, counts = scrub_text(turn.text, kinds)
            total.update(counts)
            turns.append(Turn(turn.role, text, turn.speaker))
        return replace(record, turns=turns), total
    text, counts = scrub_text(record.text, kinds)
    return replace(record, text=text), counts
