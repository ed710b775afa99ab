"""Encoding detection and mojibake repair on the forms Russian text really arrives in."""

from __future__ import annotations

import ftfy
import pytest

from homellm.data.textcodec import (
    cyrillic_score,
    decode_bytes,
    detect_encoding,
    repair_mojibake,
)

BOOK = ("Глава первая\n\nВ начале было Слово, и Слово было у Бога, и Слово было Бог. "
        "Он шёл по дороге и думал о том, что всё в мире связано.\n") * 20
SHORT = "Привет, мир!\n"


@pytest.mark.parametrize("encoding", ["cp1251", "koi8-r", "cp866"])
@pytest.mark.parametrize("text", [BOOK, SHORT], ids=["book", "one-line"])
def test_russian_code_pages_are_told_apart(encoding: str, text: str) -> None:
    found = detect_encoding(text.encode(encoding))
    assert found is not None
    assert text.encode(encoding).decode(found) == text


@pytest.mark.parametrize(("data", "expected"), [
    (BOOK.encode("utf-8"), "utf-8"),
    (b"\xef\xbb\xbf" + BOOK.encode("utf-8"), "utf-8-sig"),
    (b"\xff\xfe" + BOOK.encode("utf-16-le"), "utf-16-le"),
    (b"\xfe\xff" + BOOK.encode("utf-16-be"), "utf-16-be"),
])
def test_utf_forms_and_boms(data: bytes, expected: str) -> None:
    assert detect_encoding(data) == expected
    text, encoding, bad = decode_bytes(data)
    assert (text, encoding, bad) == (BOOK, expected, 0)


def test_head_cut_inside_a_character_is_still_utf8() -> None:
    data = BOOK.encode("utf-8")[:101]  # an odd count cuts a two-byte letter
    assert detect_encoding(data, complete=False) == "utf-8"


def test_binary_is_not_text() -> None:
    assert detect_encoding(b"\x00\x01\x02PK\x03\x04" * 100) is None
    with pytest.raises(ValueError, match="encoding"):
        decode_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)


# ----------------------------------------------------------------------------- mojibake

RU = "Ёлка и Щука. Итог: Иван Ильич видел Рим и Рязань — «всё хорошо»."


def _moji(text: str, how: str) -> str:
    import ftfy.bad_codecs  # noqa: F401
    if how == "utf8-as-cp1251":
        return text.encode().decode("sloppy-windows-1251")
    if how == "utf8-as-cp1251-twice":
        return _moji(_moji(text, "utf8-as-cp1251"), "utf8-as-cp1251")
    if how == "utf8-as-latin1":
        return text.encode().decode("latin-1")
    if how == "utf8-as-cp1252":
        return text.encode().decode("sloppy-windows-1252")
    if how == "cp1251-as-latin1":
        return text.encode("cp1251").decode("latin-1")
    if how == "cp1251-as-cp1252":
        return text.encode("cp1251").decode("sloppy-windows-1252")
    if how == "utf8-as-koi8r":
        return text.encode().decode("koi8-r")
    if how == "utf8-as-cp866":
        return text.encode().decode("cp866")
    raise AssertionError(how)


FORMS = ["utf8-as-cp1251", "utf8-as-cp1251-twice", "utf8-as-latin1", "utf8-as-cp1252",
         "cp1251-as-latin1", "cp1251-as-cp1252", "utf8-as-koi8r", "utf8-as-cp866"]


@pytest.mark.parametrize("how", FORMS)
def test_mojibake_forms_are_undone(how: str) -> None:
    broken = _moji(RU, how)
    assert broken != RU
    fixed, lines = repair_mojibake(broken)
    assert (fixed, lines) == (RU, 1)


def test_the_classic_example() -> None:
    assert repair_mojibake("РџСЂРёРІРµС‚") == ("Привет", 1)


def test_what_ftfy_alone_leaves_and_we_repair() -> None:
    # short cp1251 line: ftfy keeps it, too little evidence for its heuristics
    rim = "Рим".encode().decode("cp1251")
    assert ftfy.fix_encoding(rim) == rim
    assert repair_mojibake(rim)[0] == "Рим"
    # the no-break space of "Р" (D0 A0) turned into a plain space by an editor
    assert repair_mojibake("Р РёРј Рё РњРѕСЃРєРІР°")[0] == "Рим и Москва"
    # "И" is D0 98 and 0x98 is undefined in cp1251: it arrives as "?" or "�"
    for lost in "?\ufffd":
        broken = f"Р{lost}С‚РѕРі: Р{lost}РІР°РЅ Р{lost}Р»СЊРёС‡"
        assert repair_mojibake(broken)[0] == "Итог: Иван Ильич"
    # cp1251 read as latin-1 never was UTF-8: ftfy has nothing to undo
    latin = "Привет, мир".encode("cp1251").decode("latin-1")
    assert ftfy.fix_encoding(latin) == latin
    assert repair_mojibake(latin)[0] == "Привет, мир"


def test_only_broken_lines_change_and_are_counted() -> None:
    text = "\n".join(["Обычная строка.", _moji("Сломанная строка.", "utf8-as-cp1251"),
                      "Mixed: Привет " + _moji("мир", "utf8-as-cp1251") + " и всё.",
                      "English line.", _moji("Ещё одна.", "cp1251-as-latin1")])
    fixed, lines = repair_mojibake(text)
    assert fixed == ("Обычная строка.\nСломанная строка.\nMixed: Привет мир и всё.\n"
                     "English line.\nЕщё одна.")
    assert lines == 3


@pytest.mark.parametrize("sound", [
    "Рёв мотора и Р. Иванов; СССР и США.", "Он спросил: «Р?» — и замолчал.",
    "Буква Р и всё, Р — это буква.", "café, été, naïve, Größe, Dänemark, Österreich, Åland",
    "Ça va? Été à Paris — très bien. Mötley Crüe.", "╔══╗ ║ ok ║ ╚══╝", "Ü Ö Ä ß",
    "Ваше благородие, госпожа удача", "Кто-то когда-то сказал: «Смирение — начало мудрости».",
])
def test_sound_text_is_left_alone(sound: str) -> None:
    assert repair_mojibake(sound) == (sound, 0)


def test_score_prefers_real_words() -> None:
    assert cyrillic_score("Привет, мир!") == pytest.approx(9 / 11)
    assert cyrillic_score("РџСЂРёРІРµС‚") == 0
    assert cyrillic_score("п÷я─п╦п╡п╣я┌") == 0
    assert cyrillic_score("") == 0
