"""Russian identity and payment numbers: each kind a shape, a checksum and, where the shape alone
is ambiguous, a context word before it.

Applied in this order, each on what the one before left:

- iban: two capital letters, two check digits, 11-30 letters/digits (groups of 4 allowed); mod 97.
  First, because an IBAN's middle groups can look like a Luhn-valid card.
- card: 13-19 digits starting 2-6 (Mir, Visa, Mastercard, Amex, Maestro, UnionPay), solid or in
  the printed groups (4-4-4-4[-3], 4-6-5, 4-6-4) with one kind of separator; Luhn-checked. Solid
  13 digits only from 4 (Visa) and 14 only from 3 (Diners), so a 20240312183013 timestamp stays.
- account: a Russian 20-digit account after "р/с", "к/с", "л/с", "счёт"; it has no checksum of
  its own (that needs the bank's BIK), so the context word is required.
- snils: ``123-456-789 01`` anywhere, ``123 456 789 01`` or 11 solid digits only after "СНИЛС";
  checksum.
- inn: 12 digits (two check digits, so 1 in 100 random numbers pass) anywhere, 10 digits (one
  check digit) only after "ИНН"; checksums.
- passport: series and number ``45 06 123456`` anywhere, ``4506 123456`` / ``4506123456`` only
  after "паспорт" or "серия"; a "№" or "номер" may sit between. No checksum exists, so the
  context word or the exact spaced form is what tells it from an order number.

Only the digits are replaced; the context word stays ("ИНН <inn>").
"""

from __future__ import annotations

import re
from collections.abc import Callable

KINDS = ("iban", "card", "account", "snils", "inn", "passport")

_NOT_BEFORE = r"(?<![\w+.,/-])"  # not the tail of a longer number, word, decimal or date
_NOT_AFTER = r"(?![\w]|[.,/-]\d)"


def _context(words: str) -> re.Pattern[str]:
    # the word, then at most a few non-digit characters ("ИНН организации: ") up to the number
    return re.compile(rf"(?:{words})[^\d\n]{{0,24}}$", re.IGNORECASE)


_CTX_INN = _context(r"\bинн|\binn")
_CTX_SNILS = _context(r"\bснилс|\bsnils")
_CTX_ACCOUNT = _context(r"\b[ркл]\s?[/\\]\s?с\b|\bсч[её]т\w*|\baccount")
_CTX_PASSPORT = _context(r"\bпаспорт\w*|\bсери[яиюей]")

_CARD = re.compile(
    _NOT_BEFORE + r"(?P<n>[2-6]\d{3}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?"
    r"|[2-6]\d{3}(?P<t>[ -])\d{6}(?P=t)\d{4,5}"
    r"|4\d{12}|3\d{13}|[2-6]\d{14,18})" + _NOT_AFTER)
_IBAN = re.compile(r"(?<![\w])(?P<n>[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)"
                   r"(?![\w])")
_ACCOUNT = re.compile(_NOT_BEFORE + r"(?P<n>\d{5}[ .]?\d{3}[ .]?\d[ .]?\d{4}[ .]?\d{7})"
                      + _NOT_AFTER)
_SNILS = re.compile(_NOT_BEFORE + r"(?P<n>\d{3}(?P<s>[- ])\d{3}(?P=s)\d{3}[ -]\d{2}|\d{11})"
                    + _NOT_AFTER)
# "ИНН/КПП 7707083893/773601001" is how firms write both
_INN = re.compile(_NOT_BEFORE + r"(?P<n>\d{12}|\d{10})(?![\w]|[.,-]\d)")
_PASSPORT = re.compile(
    _NOT_BEFORE + r"(?P<n>(?P<ser>\d{2} ?\d{2}) ?(?:(?:№|N|номер|no\.?) ?)?\d{6})" + _NOT_AFTER,
    re.IGNORECASE)


def _digits(text: str) -> list[int]:
    return [int(ch) for ch in text if ch.isdigit()]


def luhn_ok(number: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(_digits(number))):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def snils_ok(number: str) -> bool:
    d = _digits(number)
    s = sum(x * w for x, w in zip(d[:9], range(9, 0, -1), strict=True))
    check = s if s < 100 else 0 if s in (100, 101) else s % 101
    return (0 if check == 100 else check) == d[9] * 10 + d[10]


def _inn_digit(d: list[int], weights: tuple[int, ...]) -> int:
    return sum(x * w for x, w in zip(d, weights, strict=False)) % 11 % 10


def inn_ok(number: str) -> bool:
    d = _digits(number)
    if len(d) == 10:
        return _inn_digit(d, (2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[9]
    if len(d) == 12:
        return (_inn_digit(d, (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[10]
                and _inn_digit(d, (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[11])
    return False


def _after(ctx: re.Pattern[str], text: str, start: int) -> bool:
    return ctx.search(text, max(0, start - 40), start) is not None


def _card(m: re.Match[str], text: str) -> bool:
    return luhn_ok(m["n"])


def _iban(m: re.Match[str], text: str) -> bool:
    return iban_ok(m["n"])


def _account(m: re.Match[str], text: str) -> bool:
    return _after(_CTX_ACCOUNT, text, m.start())


def _snils(m: re.Match[str], text: str) -> bool:
    dashed = m["s"] == "-"
    return snils_ok(m["n"]) and (dashed or _after(_CTX_SNILS, text, m.start()))


def _inn(m: re.Match[str], text: str) -> bool:
    return inn_ok(m["n"]) and (len(m["n"]) == 12 or _after(_CTX_INN, text, m.start()))


def _passport(m: re.Match[str], text: str) -> bool:
    exact = re.fullmatch(r"\d{2} \d{2} \d{6}", m["n"]) is not None
    return exact or _after(_CTX_PASSPORT, text, m.start())


RULES: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str], str], bool]]] = {
    "card": (_CARD, _card), "iban": (_IBAN, _iban), "account": (_ACCOUNT, _account),
    "snils": (_SNILS, _snils), "inn": (_INN, _inn), "passport": (_PASSPORT, _passport)}


def scrub_kind(text: str, kind: str, placeholder: str) -> tuple[str, int]:
    """``text`` with every valid number of ``kind`` replaced, and how many there were."""
    pattern, valid = RULES[kind]
    found = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal found
        if not valid(m, text):
            return m.group()
        found += 1
        return placeholder

    return pattern.sub(sub, text), found
