"""A GGUF file with only a header (v3 key/values, no tensors), as llama.cpp's converter lays
them out: architecture keys first, then the tokenizer's."""

from __future__ import annotations

import struct
from pathlib import Path

_UINT32, _FLOAT32, _STRING, _ARRAY = 4, 6, 8, 9


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(value: object) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", _STRING) + _string(value)
    if isinstance(value, float):
        return struct.pack("<If", _FLOAT32, value)
    if isinstance(value, list):
        return (struct.pack("<IIQ", _ARRAY, _STRING, len(value))
                + b"".join(_string(str(v)) for v in value))
    assert isinstance(value, int)
    return struct.pack("<II", _UINT32, value)


def write_gguf(path: Path, metadata: dict[str, object]) -> Path:
    body = b"".join(_string(key) + _value(value) for key, value in metadata.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata)) + body)
    return path


def qwen3_moe_metadata(**extra: object) -> dict[str, object]:
    """Qwen3-30B-A3B's architecture keys as convert_hf_to_gguf.py writes them."""
    return {"general.architecture": "qwen3moe", "general.name": "Qwen3-30B-A3B",
            "qwen3moe.context_length": 40960, "qwen3moe.embedding_length": 2048,
            "qwen3moe.block_count": 48, "qwen3moe.attention.head_count": 32,
            "qwen3moe.attention.head_count_kv": 4, "qwen3moe.expert_count": 128,
            "qwen3moe.expert_used_count": 8, "qwen3moe.rope.freq_base": 1000000.0, **extra,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]}
