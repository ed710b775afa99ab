"""The eval's byte and character counts per token, and the document positions of a window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from homellm.tokenizer import load_tokenizer
from homellm.train.evaluate import TokenTable
from homellm.train.lm import document_positions

TEXTS = ["Съешь же ещё этих мягких французских булок, да выпей чаю.",
         "Ёлка — 12 рублей; the price is 12₽ 🙂", "  пробелы\tи\nпереводы строк  "]


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_and_characters_per_token_sum_to_the_text(corpus: dict[str, Path],
                                                        text: str) -> None:
    tokenizer = load_tokenizer(corpus["tokenizer"])
    table = TokenTable.from_tokenizer(tokenizer, tokenizer.get_vocab_size(True))
    ids = tokenizer.encode(text).ids
    assert int(table.n_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert int(table.n_chars[ids].sum()) == len(text)
    if "🙂" in text:   # 4 bytes no 400-token vocabulary merged: tokens of 0 characters
        assert any(table.n_chars[i] == 0 for i in ids)


def test_special_tokens_count_nothing(corpus: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(corpus["tokenizer"])
    table = TokenTable.from_tokenizer(tokenizer, tokenizer.get_vocab_size(True))
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"):
        index = tokenizer.token_to_id(token)
        assert table.special[index] and table.n_bytes[index] == table.n_chars[index] == 0
    assert table.special.sum() == 4


def test_document_positions_restart_at_each_document() -> None:
    positions = document_positions([np.array([0, 3, 5]), np.array([2]), np.array([], int)], 7)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1],
                                  [0, 1, 0, 1, 2, 3, 4],
                                  [0, 1, 2, 3, 4, 5, 6]]
    # a start at the window's end (the target's document) changes no input position
    assert document_positions([np.array([7])], 7).tolist() == [[0, 1, 2, 3, 4, 5, 6]]
