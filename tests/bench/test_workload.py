"""Prompts: seeded determinism, lengths with and without a tokenizer, Russian corpora, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homellm.bench.workload import (
    TextTokenizer,
    WorkloadSpec,
    build_workload,
    load_tokenizer,
    read_corpus,
)
from homellm.demo import demo_corpus
from homellm.errors import ConfigError

RUSSIAN = (
    "Мороз и солнце; день чудесный! Ещё ты дремлешь, друг прелестный — пора, красавица, "
    "проснись. Открой сомкнуты негой взоры навстречу северной Авроры, звездою севера явись!\n"
    "Вечор, ты помнишь, вьюга злилась, на мутном небе мгла носилась; луна, как бледное пятно, "
    "сквозь тучи мрачные желтела, и ты печальная сидела.\n"
)


def make_tokenizer(folder: Path) -> TextTokenizer:
    """A tiny byte-level BPE trained on the demo's Russian + English text (a second at most)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((demo_corpus() + RUSSIAN).splitlines(), trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_same_seed_same_prompts_other_seed_others(tokenizer: TextTokenizer) -> None:
    spec = WorkloadSpec(input_len=40, output_len=16, range_ratio=0.5, num_prompts=20, seed=7)
    a, b = build_workload(spec, tokenizer), build_workload(spec, tokenizer)
    assert a.prompts == b.prompts and a.digest() == b.digest()
    other = build_workload(WorkloadSpec(**{**spec.__dict__, "seed": 8}), tokenizer)
    assert other.digest() != a.digest()
    words = build_workload(spec)
    assert words.prompts == build_workload(spec).prompts


def test_random_prompts_hit_token_lengths_and_range(tokenizer: TextTokenizer) -> None:
    spec = WorkloadSpec(input_len=50, output_len=20, range_ratio=0.2, num_prompts=40, seed=1)
    w = build_workload(spec, tokenizer)
    assert w.counted_in == "tokens" and not w.notes
    for p in w.prompts:
        assert 40 <= p.prompt_tokens <= 60
        assert p.prompt_tokens == tokenizer.count(p.text)
        assert 16 <= p.max_tokens <= 24
    assert len({p.prompt_tokens for p in w.prompts}) > 1  # the spread is used
    fixed = build_workload(WorkloadSpec(input_len=30, output_len=5, num_prompts=5), tokenizer)
    assert {p.prompt_tokens for p in fixed.prompts} == {30}
    assert {p.max_tokens for p in fixed.prompts} == {5}


def test_shared_prefix_is_identical_text(tokenizer: TextTokenizer) -> None:
    w = build_workload(WorkloadSpec(input_len=20, prefix_len=10, num_prompts=6), tokenizer)
    prefix = tokenizer.decode(tokenizer.encode(w.prompts[0].text)[:10])
    assert all(p.text.startswith(prefix) for p in w.prompts)
    assert {p.prompt_tokens for p in w.prompts} == {30}


def test_without_tokenizer_lengths_are_words_and_it_says_so() -> None:
    w = build_workload(WorkloadSpec(input_len=25, output_len=8, num_prompts=4))
    assert w.counted_in == "words"
    assert any("not tokens" in n for n in w.notes)
    assert [len(p.text.split()) for p in w.prompts] == [25] * 4


def test_russian_corpus_windows_keep_utf8_whole(tmp_path: Path,
                                                tokenizer: TextTokenizer) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text(RUSSIAN, "utf-8")
    (corpus / "sub" / "b.txt").write_text(RUSSIAN.upper(), "utf-8")
    (corpus / "skip.bin").write_bytes(b"\xff\xfe")
    text = read_corpus(corpus)
    spec = WorkloadSpec(source="corpus", path=corpus, input_len=12, num_prompts=15, seed=3)
    for tok in (tokenizer, None):
        w = build_workload(spec, tok)
        for p in w.prompts:
            assert "\ufffd" not in p.text
            assert p.text in text  # a contiguous slice of the user's own text
            assert any("а" <= ch <= "я" or "А" <= ch <= "Я" for ch in p.text)
        if tok is None:
            assert all(len(p.text.split()) == 12 for p in w.prompts)
        else:
            assert all(abs(p.prompt_tokens - 12) <= 2 for p in w.prompts)
    assert build_workload(spec, tokenizer).prompts == build_workload(spec, tokenizer).prompts


def test_corpus_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes("привет".encode("cp1251"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_corpus(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no \.txt"):
        read_corpus(empty)


def test_jsonl_and_sharegpt_files(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in [
        {"prompt": "Сколько будет два плюс два?", "output_len": 7},
        {"prompt": "Hello there", "max_tokens": 3},
        {"text": "third"},
    ]), "utf-8")
    w = build_workload(WorkloadSpec(source="file", path=jsonl, num_prompts=3), tokenizer)
    assert sorted(p.max_tokens for p in w.prompts) == [3, 7, 128]
    fixed = build_workload(WorkloadSpec(source="file", path=jsonl, num_prompts=5, output_len=9))
    assert {p.max_tokens for p in fixed.prompts} == {9}
    assert any("repeat" in n for n in fixed.notes)

    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "Расскажи о снеге"},
                           {"from": "gpt", "value": "Снег белый и холодный"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
    ], ensure_ascii=False), "utf-8")
    w = build_workload(WorkloadSpec(source="file", path=share, num_prompts=2))
    assert {p.text for p in w.prompts} == {"Расскажи о снеге"}
    assert {p.max_tokens for p in w.prompts} == {4}  # the answer's words


def test_bad_specs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="range-ratio"):
        build_workload(WorkloadSpec(range_ratio=1.0))
    with pytest.raises(ConfigError):
        build_workload(WorkloadSpec(source="file", path=Path("/nonexistent.jsonl")))
