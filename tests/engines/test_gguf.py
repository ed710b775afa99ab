"""Which llama.cpp pre-tokenizer a tokenizer.json maps to, read from its structure."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from homellm.engines.gguf import (
    QWEN2_SPLIT_REGEX,
    convert_to_gguf,
    fallback_pre_tokenizer,
    pre_tokenizer_name,
)
from homellm.tokenizer import SPLIT_REGEX, _new_tokenizer
from tests.engines.test_llamacpp import FAKE_CONVERTER  # the parts the wrapper touches

GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}

def _ours() -> dict[str, Any]:
    return json.loads(_new_tokenizer().to_str())["pre_tokenizer"]


def test_our_tokenizer_is_qwen2() -> None:
    assert SPLIT_REGEX == QWEN2_SPLIT_REGEX
    assert pre_tokenizer_name(_ours()) == "qwen2"


def test_gpt2_byte_level() -> None:
    assert pre_tokenizer_name(GPT2) == "gpt-2"
    assert pre_tokenizer_name({"type": "ByteLevel"}) == "gpt-2"
    assert pre_tokenizer_name({**GPT2, "add_prefix_space": True}) is None
    assert pre_tokenizer_name({**GPT2, "use_regex": False}) is None


def _changed(path: tuple[int, str], value: object) -> dict[str, Any]:
    pre = copy.deepcopy(_ours())
    pre["pretokenizers"][path[0]][path[1]] = value
    return pre


@pytest.mark.parametrize("pre", [
    _changed((0, "pattern"), {"Regex": QWEN2_SPLIT_REGEX.replace(r"\p{N}", r"\p{N}{1,3}")}),
    _changed((0, "pattern"), {"String": QWEN2_SPLIT_REGEX}),
    _changed((0, "behavior"), "Removed"),
    _changed((0, "invert"), True),
    _changed((1, "use_regex"), True),  # the GPT-2 regex would split again after Qwen's
    _changed((1, "add_prefix_space"), True),
    _changed((1, "type"), "Metaspace"),
    {"type": "Sequence", "pretokenizers": [_ours()["pretokenizers"][0]]},
    {"type": "Sequence", "pretokenizers": [*_ours()["pretokenizers"], {"type": "Digits"}]},
    {"type": "Metaspace", "replacement": "▁"},
    None,
    [],
])
def test_anything_else_has_no_name(pre: Any) -> None:
    assert pre_tokenizer_name(pre) is None


def test_fallback_reads_the_folder(tmp_path: Path) -> None:
    assert fallback_pre_tokenizer(tmp_path) is None  # no tokenizer.json
    (tmp_path / "tokenizer.json").write_text("{not json")
    assert fallback_pre_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_text(_new_tokenizer().to_str())
    assert fallback_pre_tokenizer(tmp_path) == "qwen2"


def test_convert_uses_qwen2_only_when_the_converter_does_not_know_it(tmp_path: Path) -> None:
    converter = tmp_path / "llama.cpp" / "convert_hf_to_gguf.py"
    (converter.parent / "gguf-py").mkdir(parents=True)
    converter.write_text(FAKE_CONVERTER)
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text(_new_tokenizer().to_str())
    out = convert_to_gguf(model, tmp_path / "m.gguf", converter=converter)
    assert out.read_bytes() == b"GGUFqwen2"
