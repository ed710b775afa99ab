"""tokenizer.py and tokenizer_report.py: training, the Hugging Face folder, the report."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import pytest

from homellm.data.layout import DatasetLayout
from homellm.data.records import Conversation, Document, Turn
from homellm.tokenizer import (
    EOT,
    IM_END,
    IM_START,
    PAD,
    TokenizerError,
    load_tokenizer,
    render_conversation,
    sample_texts,
    tokenizer_id,
    train_tokenizer,
)
from homellm.tokenizer_report import BYTES, tokenizer_report
from tests.data.tokcorpus import write_dataset

USER_TOKENS = ("<|spiritual|>", "<|dialogue|>")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetLayout:
    return write_dataset(tmp_path_factory.mktemp("ds"))[0]


@pytest.fixture(scope="module")
def tok_dir(dataset: DatasetLayout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(dataset, tmp_path_factory.mktemp("tok") / "tok", vocab_size=800,
                           special_tokens=USER_TOKENS)


def test_folder_loads_with_autotokenizer_and_renders_chatml(tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        assert (tok_dir / name).is_file(), name
    config = json.loads((tok_dir / "tokenizer_config.json").read_text("utf-8"))
    assert "<|im_start|>" in config["chat_template"]
    hf = AutoTokenizer.from_pretrained(tok_dir)
    assert hf.eos_token == IM_END and hf.pad_token == PAD
    conv = Conversation(id="c", source="s", turns=[
        Turn("system", "Ты помощник."), Turn("user", "Привет, как дела?"),
        Turn("assistant", "Хорошо! And you?")])
    messages = [{"role": t.role, "content": t.text} for t in conv.turns]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    assert rendered == render_conversation(conv) == (
        "<|im_start|>system\nТы помощник.<|im_end|>\n"
        "<|im_start|>user\nПривет, как дела?<|im_end|>\n"
        "<|im_start|>assistant\nХорошо! And you?<|im_end|>\n")
    prompt = hf.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    for token in (EOT, IM_START, IM_END, PAD, *USER_TOKENS):
        ids = hf.encode(token, add_special_tokens=False)
        assert ids == [hf.convert_tokens_to_ids(token)], token
    text = "Ёлка «зелёная» — 2024 year, it's fine.\nНовая строка"
    assert hf.decode(hf.encode(text, add_special_tokens=False)) == text


def test_special_token_ids_and_nfc(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    assert [tok.token_to_id(t) for t in (EOT, IM_START, IM_END, PAD)] == [0, 1, 2, 3]
    decomposed = unicodedata.normalize("NFD", "ёлка й")
    assert tok.decode(tok.encode(decomposed).ids) == "ёлка й"


def test_pre_tokenizer_keeps_cyrillic_words_and_splits_digits(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("«Привет», мир 2024")]
    decoded = [bytes(tok.decoder.decode([p]).encode("utf-8")).decode() for p in pieces]
    assert decoded == ["«Привет", "»,", " мир", " ", "2", "0", "2", "4"]


def test_tokenizer_id_is_the_hash_of_tokenizer_json(tok_dir: Path, dataset: DatasetLayout,
                                                    tmp_path: Path) -> None:
    digest = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert tokenizer_id(tok_dir) == digest[:16]
    again = train_tokenizer(dataset, tmp_path / "again", vocab_size=800,
                            special_tokens=USER_TOKENS)
    assert tokenizer_id(again) == tokenizer_id(tok_dir)
    meta = json.loads((again / "homellm-tokenizer.json").read_text("utf-8"))
    assert meta["seed"] == 0 and meta["sampled_bytes"] > 0


def test_sample_is_deterministic_bounded_and_order_free() -> None:
    docs = [Document(id=str(i), source="s", text=f"текст номер {i} " * 20) for i in range(200)]
    size = len(docs[0].text.encode("utf-8"))
    sample = sample_texts(docs, 50 * size, seed=1)
    assert sum(len(t.encode("utf-8")) for t in sample) <= 50 * size
    assert len(sample) >= 45
    assert sample == sample_texts(list(reversed(docs)), 50 * size, seed=1)
    assert sample != sample_texts(docs, 50 * size, seed=2)
    assert len(sample_texts(docs, 10**9, seed=1)) == 200


def test_trains_on_plain_texts(tmp_path: Path) -> None:
    out = train_tokenizer(["Привет мир, hello world!"] * 50, tmp_path / "t", vocab_size=300)
    assert load_tokenizer(out).get_vocab_size() <= 300


def test_errors_are_one_line(tmp_path: Path, dataset: DatasetLayout) -> None:
    with pytest.raises(TokenizerError, match="below 256"):
        train_tokenizer(dataset, tmp_path / "t", vocab_size=100)
    with pytest.raises(TokenizerError, match="no train split"):
        train_tokenizer(DatasetLayout(tmp_path / "empty"), tmp_path / "t", vocab_size=500)
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_report_compares_against_the_byte_baseline(tok_dir: Path, dataset: DatasetLayout,
                                                   tmp_path: Path) -> None:
    small = train_tokenizer(dataset, tmp_path / "small", vocab_size=300)
    report = tokenizer_report(dataset, {"trained": tok_dir, "small": small})
    base = report.row(BYTES)
    assert base.bytes_per_token == 1.0 and base.tokens == base.bytes
    assert 0.5 < base.chars_per_token < 1.0  # Cyrillic letters are two bytes
    trained, weak = report.row("trained"), report.row("small")
    assert trained.bytes_per_token > weak.bytes_per_token > 1.0
    assert trained.tokens_per_word < weak.tokens_per_word
    sources = {r.source for r in report.rows if r.tokenizer == "trained"}
    assert sources == {"book0.txt", "book1.txt", "chats.sql", "(all)"}
    data = json.loads(json.dumps(report.to_json()))
    assert data["split"] == "val" and len(data["rows"]) == 12
    assert "trained" in report.table() and "bytes/token" in report.table()


def test_progress_is_bytes_read_of_the_train_split(tmp_path: Path, dataset: DatasetLayout,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("homellm.tokenizer.READ_REPORT_BYTES", 4096, raising=False)
    calls: list[tuple[str, int, int | None]] = []
    train_tokenizer(dataset, tmp_path / "t", vocab_size=400,
                    progress=lambda *call: calls.append(call))
    size = dataset.split_file("train").stat().st_size
    read = [(done, total) for stage, done, total in calls if stage == "read"]
    assert all(total == size for _, total in read)  # not the sample's 512 MiB cap
    dones = [done for done, _ in read]
    assert dones[0] == 0 and dones[-1] == size and dones == sorted(dones)
    assert len(dones) > 2  # moves while reading, not only at the ends
    assert calls[-1][0] == "train" and calls[-1][1] == calls[-1][2] > 0
