"""Scrubbing contacts and Russian identity and payment numbers out of dialogues, leaving dates,
times, prices and other numbers alone."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from homellm.data.layout import DatasetLayout
from homellm.data.pii_ru import iban_ok, inn_ok, luhn_ok, snils_ok
from homellm.data.records import Conversation, Document, Turn
from homellm.data.scrub import scrub_record, scrub_text
from homellm.data.split import write_splits

from .pii_ru_cases import FALSE_CASES, TRUE_CASES, expected, raw, tally


@pytest.mark.parametrize(("text", "expected", "kinds"), [
    ("Пишите на ivan.petrov@mail.ru, отвечу.", "Пишите на <email>, отвечу.", {"email": 1}),
    ("Почта: иван@почта.рф", "Почта: <email>", {"email": 1}),
    ("Мой номер +7 (916) 123-45-67, звоните после 18:30.",
     "Мой номер <phone>, звоните после 18:30.", {"phone": 1}),
    ("Звони 8 916 123 45 67 или 89161234567 или +79161234567",
     "Звони <phone> или <phone> или <phone>", {"phone": 3}),
    ("8-800-555-35-35 — бесплатно", "<phone> — бесплатно", {"phone": 1}),
    ("Городской: 123-45-67.", "Городской: <phone>.", {"phone": 1}),
    ("London: +44 20 7946 0958, Berlin +49 (30) 123456",
     "London: <phone>, Berlin <phone>", {"phone": 2}),
    ("Страница https://vk.com/id12345.", "Страница <url>.", {"url": 1}),
    ("Сайт example.com и www.test.org/page?x=1", "Сайт <url> и <url>", {"url": 2}),
    ("(см. https://ru.wikipedia.org/wiki/Москва_(город)).", "(см. <url>).", {"url": 1}),
])
def test_contacts_replaced_and_counted(text: str, expected: str, kinds: dict[str, int]) -> None:
    assert scrub_text(text) == (expected, Counter(kinds))


@pytest.mark.parametrize("text", [
    "Встреча 12.03.2024 в 18:30, до 20:00.",
    "Дата 2024-03-12, или 12/03/2024, или 12-03-2024.",
    "Цена 1 500 руб., со скидкой 1500,00 ₽ или $19.99; было 2 990 р.",
    "В 1995 году в городе было 1 000 000 жителей и 8 900 000 деревьев.",
    "ИНН 7707083894, заказ №7707083893, заказ №12345678901.",
    "Время 10:00-12:30, 2-3 раза в день, скидка 10-15%.",
    "Координаты 55.755826, 37.617300; версия 3.11.7.",
    "т.е. и т.д., т.к. см. стр. 5, гл. 3.",
    "В 8 утра 916 человек пришли, 45 ушли, 67 остались.",
    "Пиши в телегу @ivan_petrov",
    "Псалом 90, стих 11-12; Мф. 5:3-12.",
])
def test_dates_times_prices_and_numbers_untouched(text: str) -> None:
    assert scrub_text(text) == (text, Counter())


def test_only_the_kinds_asked_for() -> None:
    text = "a@b.ru, +7 916 123-45-67, https://x.ru"
    assert scrub_text(text, kinds=("phone",)) == ("a@b.ru, <phone>, https://x.ru",
                                                  Counter(phone=1))
    with pytest.raises(ValueError, match="unknown scrub kind"):
        scrub_text(text, kinds=("address",))


def test_scrub_record_copies_every_turn() -> None:
    conv = Conversation(id="c", source="dump.sql", turns=[
        Turn("user", "мой телефон 8 (912) 000-11-22", "u1"),
        Turn("assistant", "Записал. Пишите и на a@b.ru", "bot")])
    scrubbed, counts = scrub_record(conv)
    assert [t.text for t in scrubbed.turns] == ["мой телефон <phone>",
                                                "Записал. Пишите и на <email>"]
    assert scrubbed.turns[0].speaker == "u1" and counts == Counter(phone=1, email=1)
    assert conv.turns[0].text.endswith("000-11-22")  # the original is left alone
    doc, counts = scrub_record(Document(id="d", source="s", text="см. www.azbyka.ru"))
    assert doc.text == "см. <url>" and counts == Counter(url=1)


@pytest.mark.parametrize("case", TRUE_CASES + FALSE_CASES)
def test_russian_pii_corpus(case: str) -> None:
    text, counts = scrub_text(raw(case))
    assert text == expected(case)
    assert counts == Counter(re.findall(r"<(\w+)>", expected(case)))


def test_russian_pii_precision_and_recall() -> None:
    # the figures docs/data.md states; a change to the scrubber or the corpus must update both
    tp, fp, fn = tally(TRUE_CASES + FALSE_CASES)
    assert (tp, fp, fn) == (28, 0, 4)
    assert tally(FALSE_CASES) == (0, 0, 0)
    assert round(tp / (tp + fp), 2) == 1.0 and round(tp / (tp + fn), 2) == 0.88


@pytest.mark.parametrize(("check", "good", "bad"), [
    (luhn_ok, ["4276 7104 6563 4148", "371414129173666"], ["4276 7104 6563 4149", "9785171183660"]),
    (snils_ok, ["112-233-445 95", "08740756798"], ["123-456-789 01", "112-233-445 96"]),
    (inn_ok, ["7707083893", "500100732259"], ["7707083894", "500100732258", "1234567890"]),
    (iban_ok, ["DE89370400440532013000", "GB82 WEST 1234 5698 7654 32"],
     ["DE89370400440532013001", "DE8937"]),
])
def test_checksums(check: Callable[[str], bool], good: list[str], bad: list[str]) -> None:
    assert all(check(n) for n in good) and not any(check(n) for n in bad)


def test_snils_checksum_edges() -> None:
    # sums: 360 -> mod 101 = 57; 99 stays; 100 and 101 -> 00; 202 -> 0; 201 -> 100 -> 00
    good = ["888-888-888 57", "000-029-998 99", "000-029-999 00", "000-038-999 00",
            "002-999-998 00", "002-999-997 00"]
    assert all(snils_ok(n) for n in good)
    assert not any(snils_ok(n) for n in ["000-029-999 100"[:-1], "000-038-999 01",
                                         "002-999-997 100"[:-1]])


def test_pii_counts_per_kind_reach_the_split_stats(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path / "ds")
    conv = Conversation(id="pii", source="chat.sql", turns=[
        Turn("user", "Карта 2200 1107 0434 1925, ИНН 7707083893, паспорт 45 06 123456"),
        Turn("assistant", "СНИЛС 112-233-445 95 и р/с 40817810099910004312 записал, "
                          "заказ №1234567890.")])
    stats = write_splits([conv], layout, seed=0)
    saved = json.loads(layout.split_stats.read_text(encoding="utf-8"))
    kinds = {"card": 1, "inn": 1, "passport": 1, "snils": 1, "account": 1}
    assert stats.scrub == kinds and saved["scrub"] == kinds
