"""clean_book_text: what a scanned or typeset book leaves in its text, and what must survive."""

from __future__ import annotations

import re

import pytest

from homellm.data.textclean import clean_book_text


def _book(pages: int = 12, lines_per_page: int = 38) -> tuple[str, list[str]]:
    """A typeset book: running headers (book title / chapter, alternating), page numbers at the
    foot, a form feed between pages. Returns the text and the body lines it must keep."""
    body, out, n = [], [], 0
    for page in range(1, pages + 1):
        out += ["ДУХОВНАЯ ЖИЗНЬ" if page % 2 else "Глава 1. О смирении", ""]
        for _ in range(lines_per_page):
            line = f"Слово {n} о том, как жить, и что-то ещё {n * 7 % 13}."
            body.append(line)
            out.append(line)
            n += 1
        out += ["", f"— {page} —" if page % 3 == 0 else str(page), "\f"]
    return "\n".join(out), body


def test_running_headers_and_page_numbers_go_body_stays() -> None:
    text, body = _book()
    cleaned, stats = clean_book_text(text)
    assert stats.page_numbers == 12
    assert stats.header_lines == 12
    kept = [ln for ln in cleaned.split("\n") if ln]
    assert kept == body


def test_page_break_inside_a_hyphenated_word() -> None:
    text, _ = _book(pages=8)
    text = re.sub(r"Слово 37 .*", "Слово 37 о пере-", text)
    text = text.replace("Слово 38 о том", "ход том", 1)
    cleaned, stats = clean_book_text(text)
    assert "Слово 37 о переход том, как жить" in cleaned
    assert stats.hyphens_joined == 1
    assert (stats.page_numbers, stats.header_lines) == (8, 8)


def test_chapter_and_verse_numbers_are_not_page_numbers() -> None:
    verses = "\n".join(f"{i}\nИ сказал Бог: да будет свет. И стал свет." for i in range(1, 30))
    cleaned, stats = clean_book_text(verses)
    assert stats.page_numbers == 0 and cleaned == verses
    chapters = "\n".join(f"{i}\n" + "Текст главы.\n" * (i * 7 % 23 + 3) for i in range(1, 9))
    assert clean_book_text(chapters)[1].page_numbers == 0


def test_scene_breaks_and_refrains_without_regular_spacing_stay() -> None:
    parts = []
    for i in range(8):
        parts += ["Текст."] * (5 + i * 11 % 17) + ["* * *", "Господи, помилуй."]
    text = "\n".join(parts)
    cleaned, stats = clean_book_text(text)
    assert stats.header_lines == 0
    assert cleaned.count("* * *") == 8 and cleaned.count("Господи, помилуй.") == 8


@pytest.mark.parametrize(("raw", "expected"), [
    ("пере-\nход", "переход"),
    ("пере-  \n   ход дальше", "переход дальше"),
    ("пере\u2010\nход", "переход"),
    ("пере\u00ad\nход", "переход"),               # soft hyphen at the break
    ("мяг\u00adкий", "мягкий"),                   # soft hyphen inside a line: invisible
    ("кто-\nто пришёл", "кто-то пришёл"),         # real hyphenated words keep the hyphen
    ("как-\nнибудь", "как-нибудь"),
    ("кое-\nкак", "кое-как"),
    ("из-\nза угла", "из-за угла"),
    ("кто-то и что-либо", "кто-то и что-либо"),   # hyphens inside a line are never touched
    ("Москва-\nРека", "Москва-\nРека"),           # capital after the break: not a broken word
    ("1941-\n1945", "1941-\n1945"),
    ("слово -\nдальше", "слово -\nдальше"),       # a dash after a space
])
def test_hyphenation(raw: str, expected: str) -> None:
    assert clean_book_text(raw)[0] == expected


def test_whitespace_controls_and_unicode() -> None:
    raw = ("  Отступ   и    пробелы   \nтаб\tостаётся\t\t\tодин\x07\x00\x1b\n"
           "нбсп\u00a0здесь\u2009и\u200bтам\ufeff\r\nконец\rстроки"
           "\n\n\n\n\n\nпосле пустых\n\n\nдва пустых остаются\n"
           "e\u0301 и й")  # decomposed é and й
    cleaned, stats = clean_book_text(raw)
    assert cleaned == ("Отступ и пробелы\nтаб\tостаётся\tодин\n"
                       "нбсп здесь итам\nконец\nстроки\n\n\nпосле пустых\n\n\n"
                       "два пустых остаются\né и й")
    assert stats.control_chars == 5 and stats.odd_spaces == 2 and stats.blank_runs == 1
    assert stats.chars_in == len(raw) and stats.chars_out == len(cleaned)


def test_yo_kept_or_written_as_e() -> None:
    assert clean_book_text("Ёлка, ещё, всё")[0] == "Ёлка, ещё, всё"
    text, stats = clean_book_text("Ёлка, ещё, всё", yo="e")
    assert text == "Елка, еще, все" and stats.yo_replaced == 3
    with pytest.raises(ValueError, match="yo"):
        clean_book_text("x", yo="ye")  # type: ignore[arg-type]
