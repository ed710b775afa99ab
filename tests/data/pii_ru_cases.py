"""A corpus for the Russian PII scrubber, marked up with the truth and with what it gives.

``[[kind:value]]``   true PII of that kind, which the scrubber replaces with ``<kind>``;
``[[!kind:value]]``  true PII the scrubber misses (a known limit, counted against recall);
``{{kind:value}}``   not PII, but the scrubber replaces it (counted against precision).
Everything else must come out unchanged. Numbers are made up; they pass their checksums.
"""

from __future__ import annotations

import re

TRUE_CASES = [
    "Карта [[card:2200 1107 0434 1925]], переведите до пятницы.",
    "Номер карты [[card:4276-7104-6563-4148]], срок 12/27.",
    "скинь на [[card:5469549817410409]] плз",
    "Amex [[card:3714 141291 73666]], Maestro [[card:6762396341019084218]].",
    "СНИЛС [[snils:112-233-445 95]], снилс жены: [[snils:08740756798]].",
    "мой [[snils:112-233-445-95]] для Госуслуг",
    "ИНН [[inn:7707083893]], КПП 773601001.",
    "ИНН/КПП [[inn:7707083893]]/773601001, СНИЛС: [[snils:112 233 445 95]]",
    "ИНН физлица: [[inn:500100732259]], его инн [[inn:501363776233]]; вот ещё [[inn:777619244908]]",
    "паспорт [[passport:45 06 123456]] выдан ОВД",
    "[[passport:45 06 123456]] выдан 12.03.2010",
    "серия [[passport:4506 № 123456]], паспорт [[passport:45 06 №123456]]",
    "Паспортные данные: [[passport:4506123456]]",
    "IBAN [[iban:DE89 3704 0044 0532 0130 00]] или [[iban:GB82WEST12345698765432]]",
    "IBAN [[iban:DE35 5992 0575 5947 0900 54]]",  # its middle 16 digits pass Luhn
    "р/с [[account:40817810099910004312]], к/с [[account:30101810400000000225]]",
    "расчётный счёт [[account:40702810400000012345]] в Сбере",
    "счёт: [[account:40817 810 0 9991 0004312]]",
    "Мой номер [[phone:+7 916 123-45-67]], карта [[card:2200110704341925]]",
    # known misses: mixed separators, context after the number, no context at all
    "карта [[!card:4276 7104-6563 4148]]",
    "[[!inn:7715170282]] — это мой ИНН",
    "переведи на [[!account:40817810099910004312]]",
    "данные для билета: [[!passport:4506 123456]]",
]

FALSE_CASES = [
    "Встреча 12.03.2024 в 18:30, отчёт за 2024-03-12, срок 12/03/2024.",
    "заказ № 1234567890 и заказ №1061467186 готовы",
    "Номер заказа 1061467186, трек 80085432109876, лог 20240312183013 (passes Luhn)",
    "числа 112 233 445 95 без слова СНИЛС перед ними",
    "Цена 1 234 567,89 ₽, итого 12 345 678 руб., было 4 506 123 р.",
    "звоните +7 (916) 123-45-6, или 8 916 12",
    "ISBN 978-5-17-118366-0, ISBN 9785171183660, ISBN 5-17-118366-2",
    "карта 4832806435319266 не проходит, и 4949 2143 4927 6024 тоже",
    "КПП 773601001, ОГРН 1027700132195, БИК 044525225",
    "счёт на оплату № 1234 от 12.03.2024 на сумму 45 060,00",
    "в 2023 году 4506 человек, в 2024 — 123456; числа 4506 123456",
    "СНИЛС 123-456-789 01 не сходится с контрольной суммой",
    "IBAN DE89 3704 0044 0532 0130 01 с опечаткой",
    "версия 3.11.7, координаты 55.755826, 37.617300, время 10:00-12:30",
    "ИНН 1234567890 с ошибкой в контрольной цифре",
]

_MARK = re.compile(r"\[\[(!?)(\w+):([^\]]+)\]\]|\{\{(\w+):([^}]+)\}\}")


def raw(case: str) -> str:
    """The text as a user would have written it."""
    return _MARK.sub(lambda m: m[3] if m[2] else m[5], case)


def expected(case: str) -> str:
    """What the scrubber gives: found PII and false hits replaced, misses left."""
    def sub(m: re.Match[str]) -> str:
        if m[4]:
            return f"<{m[4]}>"
        return m[3] if m[1] else f"<{m[2]}>"
    return _MARK.sub(sub, case)


def tally(cases: list[str]) -> tuple[int, int, int]:
    """True positives, false positives and false negatives marked up in ``cases``."""
    tp = fp = fn = 0
    for m in _MARK.finditer("\n".join(cases)):
        if m[4]:
            fp += 1
        elif m[1]:
            fn += 1
        else:
            tp += 1
    return tp, fp, fn
