"""Rope scaling in each engine's own spelling, for a max_context beyond the model's window."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from homellm.config import ModelConfig, ReplicaConfig, parse_stack
from homellm.engines.base import LaunchSpec
from homellm.engines.llamacpp import LlamaCppAdapter
from homellm.engines.registry import resolve_stack
from homellm.errors import ConfigError
from tests.gguf_header import qwen3_moe_metadata, write_gguf

YARN_131K = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                 "original_max_position_embeddings": 32768,
                                 "rope_theta": 1000000.0},
             "max_position_embeddings": 131072}


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def _spec(engine: str, context: int, engine_args: str = "{}") -> LaunchSpec:
    stack = parse_stack(f"models:\n  q:\n    source: Qwen/Qwen3-30B-A3B\n    engine: {engine}\n"
                        f"    max_context: {context}\n    engine_args: {engine_args}\n"
                        "    replicas: [{gpus: [0, 1]}]\n")
    return resolve_stack(stack)[0]


def _value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, argv
    return argv[argv.index(flag) + 1]


def test_sglang_takes_the_overrides_as_json_model_override_args() -> None:
    argv = _spec("sglang", 131072).argv
    assert _value(argv, "--context-length") == "131072"
    assert json.loads(_value(argv, "--json-model-override-args")) == YARN_131K
    assert "--hf-overrides" not in argv


def test_vllm_within_the_window_gets_no_override() -> None:
    argv = _spec("vllm", 40960).argv
    assert _value(argv, "--max-model-len") == "40960"
    assert "--hf-overrides" not in argv


def test_a_users_own_hf_overrides_is_merged_into_one_flag() -> None:
    argv = _spec("vllm", 131072, "{hf_overrides: '{\"attn_logit_softcapping\": null}'}").argv
    assert json.loads(_value(argv, "--hf-overrides")) == {"attn_logit_softcapping": None,
                                                          **YARN_131K}


@pytest.mark.parametrize("theirs", ['{"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}',
                                    '{"max_position_embeddings": 65536}'])
def test_a_users_conflicting_rope_override_is_refused(theirs: str) -> None:
    quoted = theirs.replace("'", "''")
    with pytest.raises(ConfigError, match=r"models\.q\.engine_args\.hf_overrides: sets ") as got:
        _spec("vllm", 131072, f"{{hf_overrides: '{quoted}'}}")
    assert "\n" not in str(got.value)


def _llamacpp(adapter: LlamaCppAdapter, gguf: Path, context: int) -> list[str]:
    config = ModelConfig(source=str(gguf), engine="llamacpp", max_context=context,
                         replicas=[ReplicaConfig(gpus=[0])])
    return adapter.launch("tiny", config, config.replicas[0], 0, 8101).argv


@pytest.fixture
def qwen_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "qwen3-30b-a3b.gguf", qwen3_moe_metadata())


def test_llama_server_takes_rope_scaling_yarn(qwen_gguf: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "llama-server").write_text("#!/bin/sh\necho '--port --host --model'\n")
    (bindir / "llama-server").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    adapter = LlamaCppAdapter(server="llama-server")
    argv = _llamacpp(adapter, qwen_gguf, 131072)
    assert _value(argv, "--ctx-size") == "131072"
    assert (_value(argv, "--rope-scaling"), _value(argv, "--rope-scale"),
            _value(argv, "--yarn-orig-ctx")) == ("yarn", "4", "32768")
    assert "--rope-scaling" not in _llamacpp(adapter, qwen_gguf, 32768)


def test_llama_cpp_python_takes_its_own_spelling(qwen_gguf: Path) -> None:
    argv = _llamacpp(LlamaCppAdapter(server="llama_cpp.server"), qwen_gguf, 65536)
    assert _value(argv, "--n_ctx") == "65536"
    assert (_value(argv, "--rope_scaling_type"), _value(argv, "--rope_freq_scale"),
            _value(argv, "--yarn_orig_ctx")) == ("2", "0.5", "32768")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (bash .ci/install-llamacpp.sh)")
def test_llama_cpp_python_parses_the_rope_flags_into_its_settings(qwen_gguf: Path) -> None:
    from llama_cpp import LLAMA_ROPE_SCALING_TYPE_YARN
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, Settings

    argv = _llamacpp(LlamaCppAdapter(server="llama_cpp.server"), qwen_gguf, 131072)
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    settings = parse_model_from_args(ModelSettings, parser.parse_args(argv[3:]))
    assert settings.rope_scaling_type == LLAMA_ROPE_SCALING_TYPE_YARN
    assert settings.rope_freq_scale == 0.25 and settings.yarn_orig_ctx == 32768
    assert settings.n_ctx == 131072


def test_every_vllm_flag_for_128k_is_in_vllm_0_33s_own_help() -> None:
    recorded = Path(__file__).parent / "data" / "vllm-0.33.0-serve-help-all.txt"
    accepted = set(re.findall(r"(?<![\w-])(--[A-Za-z][\w.-]*)", recorded.read_text()))
    argv = _spec("vllm", 131072).argv
    flags = {a for a in argv if a.startswith("--")}
    assert "--hf-overrides" in flags and flags <= accepted, flags - accepted
