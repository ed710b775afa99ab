"""Scrubbing contacts out of dialogues, leaving dates, times, prices and numbers alone."""

from __future__ import annotations

from collections import Counter

import pytest

from homellm.data.records import Conversation, Document, Turn
from homellm.data.scrub import scrub_record, scrub_text


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
    "ИНН 7707083893, счёт 40817810099910004312, заказ №12345678901.",
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
