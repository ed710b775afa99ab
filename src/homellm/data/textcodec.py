"""Bytes → text: encoding detection and mojibake repair for the user's books and dumps.

Detection: a BOM wins; then strict UTF-8 (most files today, and a cheap exact test); then
charset-normalizer, which is maintained, pure Python and already in every environment that has
``requests``. It is reliable on book-length Cyrillic but guesses on a line or two (it takes
"Привет, мир!" in koi8-r for Shift-JIS), so where it found no language we fall back to the
Russian code pages scored by how Russian the result looks.

Mojibake: ftfy's ``fix_encoding`` undoes UTF-8 that was read as cp1251, cp1252, latin-1 or
MacRoman and saved again ("РџСЂРёРІРµС‚" → "Привет"), double layers included. It gives up on
short cp1251 lines ("Р\\xa0РёРј" = "Рим" stays) and on lines where the lost byte 0x98 (the
second byte of "И", undefined in cp1251) became "�"; it never touches cp1251 text read as
latin-1 ("Ïðèâåò") or UTF-8 read as koi8-r/cp866 ("п÷я─п╦", "╨Я╤А╨╕"), because those do not
end in UTF-8. ``repair_mojibake`` adds those cases, each accepted only when the line becomes
more plausibly Russian (``cyrillic_score``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import charset_normalizer
import ftfy
import ftfy.bad_codecs

_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_RUSSIAN_PAGES = ("cp1251", "koi8-r", "cp866", "mac-cyrillic")


def detect_encoding(data: bytes, *, complete: bool = True) -> str | None:
    """The encoding of ``data`` (a whole file, or its head when ``complete`` is false).

    Returns a Python codec name ("utf-8-sig", "utf-16-le" — the BOM is part of the name's
    meaning, "utf-8", "cp1251", ...) or None when the bytes do not look like text.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    if b"\x00" in data[:4096]:
        return None  # NUL outside UTF-16/32 means a binary file, not an encoding
    if _is_utf8(data, complete):
        return "utf-8"
    best = charset_normalizer.from_bytes(data).best()
    if best is not None and best.coherence >= 0.2:
        return _plain_name(data, str(best.encoding))
    # too short for charset-normalizer to see a language: try the Russian pages in order of
    # how common they are (a tie goes to the earlier one)
    ranked = sorted(_RUSSIAN_PAGES, key=lambda p: -cyrillic_score(_decode_or_empty(data, p)))
    if cyrillic_score(_decode_or_empty(data, ranked[0])) >= 0.5:
        return ranked[0]
    if best is not None and best.coherence > 0:
        return str(best.encoding)
    return "cp1252" if _decode_or_empty(data, "cp1252") else None


def _plain_name(data: bytes, name: str) -> str:
    # cp1125 (Ukrainian DOS) is cp866 with four letters changed; say cp866 when both agree
    if name == "cp1125" and _decode_or_empty(data, "cp866") == data.decode("cp1125"):
        return "cp866"
    return name


def _is_utf8(data: bytes, complete: bool) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        # a head cut inside a multi-byte character is still UTF-8
        return not complete and e.start >= len(data) - 3 and e.reason == "unexpected end of data"
    return True


def _decode_or_empty(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return ""


def decode_bytes(data: bytes) -> tuple[str, str, int]:
    """Decode a whole file: (text, encoding, undecodable bytes replaced by U+FFFD).

    Raises ValueError when the bytes are not text at all; readers turn it into their error.
    """
    encoding = detect_encoding(data)
    if encoding is None:
        raise ValueError("cannot tell the text encoding (a binary file?)")
    codec = reading_codec(encoding)
    try:
        return data.decode(codec), encoding, 0
    except UnicodeDecodeError:
        text = data.decode(codec, errors="replace")
        return text, encoding, text.count("\ufffd")


def reading_codec(encoding: str) -> str:
    """The codec that decodes a file of this detected encoding and drops its BOM."""
    # "utf-16"/"utf-32" read the byte order from the BOM and drop it; "-le"/"-be" keep it
    return encoding[:6] if encoding.startswith(("utf-16", "utf-32")) else encoding


# ----------------------------------------------------------------------------- plausibility

_EDGE_PUNCT = ".,;:!?()[]{}<>\"'«»„“”‘’—–-…*/"
_RUSSIAN_WORD = re.compile(r"[\u0400-\u04ff]+(?:-[\u0400-\u04ff]+)*")


def cyrillic_score(text: str) -> float:
    """Share of the non-space characters that form well-formed Cyrillic words (0..1).

    Mojibake is made of Cyrillic letters too ("РџСЂРёРІРµС‚", "п═п╬я│"), but with capitals in the
    middle of words or with symbols and Latin letters inside them, which this does not count.
    """
    total = good = 0
    for token in text.split():
        total += len(token)
        core = token.strip(_EDGE_PUNCT)
        if (_RUSSIAN_WORD.fullmatch(core)
                and (core.islower() or core.isupper() or core[1:].islower())):
            good += len(core)
    return good / total if total else 0.0


# ----------------------------------------------------------------------------- mojibake

# the characters cp1251 shows for the continuation bytes 0x80..0xBF of UTF-8
_CP1251_TAIL = "".join(bytes([b]).decode("sloppy-windows-1251") for b in range(0x80, 0xC0))
_CP1251_MOJI = re.compile(f"[РС][{re.escape(_CP1251_TAIL)}]")
# a Russian word in cp1251 read as latin-1 is a run of À..ÿ; Western words hardly have four
_LATIN1_MOJI = re.compile("[\u00c0-\u00ff]{4}")
_BOX_MOJI = re.compile("[\u2500-\u257f]")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def _rerun(line: str, encode: str, decode: str, *, runs: re.Pattern[str] = _NON_ASCII_RUN,
           prepare: Callable[[str], str] = str) -> str:
    """Re-encode every non-ASCII run of ``line`` with ``encode`` and decode it with ``decode``.

    Runs that do not survive the round trip stay as they are, so a line mixing real text and
    mojibake is repaired only where it is broken. ASCII is the same in every code page here.
    """
    def fix(m: re.Match[str]) -> str:
        try:
            return prepare(m.group()).encode(encode).decode(decode)
        except UnicodeError:
            return m.group()
    return runs.sub(fix, line)


# "Р" (0xD0) is never a continuation byte, so in mojibake "Р " is "Р\xa0" (= "Р") whose
# no-break space an editor turned into a space, and "Р�"/"Р?" is "И" (D0 98) whose 0x98,
# undefined in cp1251, was lost on the way.
_CP1251_RUN = re.compile(r"(?:[^\x00-\x7f]|(?<=Р)[ ?])+")


def _restore_cp1251_losses(run: str) -> str:
    return re.sub("Р[\ufffd?]", "Р\x98", run.replace("Р ", "Р\xa0"))


def _utf8_read_as_cp1251(line: str) -> str:
    return _rerun(line, "sloppy-windows-1251", "utf-8", runs=_CP1251_RUN,
                  prepare=_restore_cp1251_losses)


def _line_candidates(line: str) -> list[Callable[[str], str]]:
    found: list[Callable[[str], str]] = []
    if len(_CP1251_MOJI.findall(line)) >= 2:
        found.append(_utf8_read_as_cp1251)
    if _LATIN1_MOJI.search(line):
        found.append(lambda s: _rerun(s, "sloppy-windows-1252", "sloppy-windows-1251"))
    if _BOX_MOJI.search(line):
        found.append(lambda s: _rerun(s, "koi8-r", "utf-8"))
        found.append(lambda s: _rerun(s, "cp866", "utf-8"))
    return found


def _fix_line(line: str) -> str:
    fixed = ftfy.fix_encoding(line)
    best, best_score = fixed, cyrillic_score(fixed)
    # once ftfy has judged the line to be mojibake, any better reading wins; otherwise a real
    # gain is needed, so that sound text is never "repaired" into another sound text
    margin = 0.0 if fixed != line else 0.2
    tries = [(c, line) for c in _line_candidates(line)]
    if fixed != line:
        tries += [(c, fixed) for c in _line_candidates(fixed)]
    for candidate, source in tries:
        new = candidate(source)
        if new == best or _has_c1(new) or new.count("\ufffd") > best.count("\ufffd"):
            continue
        score = cyrillic_score(new)
        if score >= best_score + margin and (
                score > best_score or new.count("\ufffd") < best.count("\ufffd")):
            best, best_score = new, score
    return best


def _has_c1(text: str) -> bool:
    return any("\x80" <= ch <= "\x9f" for ch in text)


def repair_mojibake(text: str) -> tuple[str, int]:
    """Undo mojibake line by line: (repaired text, number of lines changed)."""
    if text.isascii():
        return text, 0
    lines = text.split("\n")
    changed = 0
    for i, line in enumerate(lines):
        if line.isascii():
            continue
        fixed = _fix_line(line)
        if fixed != line:
            lines[i] = fixed
            changed += 1
    return "\n".join(lines), changed
