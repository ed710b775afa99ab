"""Engine commands built from stack files, and the --help preflight against a real engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from homellm.config import parse_stack
from homellm.engines.base import LaunchSpec
from homellm.engines.preflight import accepted_flags, preflight
from homellm.engines.registry import resolve_stack
from homellm.errors import EngineError


def _specs(text: str) -> dict[str, LaunchSpec]:
    return {s.replica: s for s in resolve_stack(parse_stack(text))}


def test_vllm_tensor_parallel_follows_gpus_and_pins_devices() -> None:
    specs = _specs("""
models:
  q:
    source: Qwen/Qwen3-30B-A3B
    engine: vllm
    dtype: bfloat16
    max_context: 131072
    engine_args: {gpu_memory_utilization: 0.9, enforce_eager: true, skipped: false}
    replicas:
      - {gpus: [0, 1], port: 9100}
""")
    spec = specs["q/0"]
    argv = spec.argv
    assert argv[argv.index("serve") + 1] == "Qwen/Qwen3-30B-A3B"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--max-model-len") + 1] == "131072"
    assert argv[argv.index("--served-model-name") + 1] == "q"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--enforce-eager" in argv and "--skipped" not in argv
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert spec.health_url == "http://127.0.0.1:9100/health"
    assert spec.upstream_model == "q"


def test_vllm_single_gpu_has_no_tensor_parallel_flag() -> None:
    spec = _specs("models:\n  q:\n    source: a/b\n    engine: vllm\n"
                  "    replicas: [{gpus: [1]}]\n")["q/0"]
    assert "--tensor-parallel-size" not in spec.argv
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize(("gpus", "pp", "tp"), [("[0, 1]", 2, None), ("[0, 1, 2, 3]", 2, "2")])
def test_vllm_pipeline_parallel_takes_its_share_of_the_gpus(gpus: str, pp: int,
                                                            tp: str | None) -> None:
    spec = _specs(f"models:\n  q:\n    source: a/b\n    engine: vllm\n"
                  f"    engine_args: {{pipeline_parallel_size: {pp}}}\n"
                  f"    replicas: [{{gpus: {gpus}}}]\n")["q/0"]
    argv = spec.argv
    assert argv[argv.index("--pipeline-parallel-size") + 1] == str(pp)
    assert argv.count("--tensor-parallel-size") == (1 if tp else 0)
    if tp:
        assert argv[argv.index("--tensor-parallel-size") + 1] == tp


def test_pipeline_parallel_must_divide_the_gpus() -> None:
    from homellm.errors import ConfigError

    with pytest.raises(ConfigError, match="pipeline_parallel_size: 3 must be a whole divisor"):
        _specs("models:\n  q:\n    source: a/b\n    engine: vllm\n"
               "    engine_args: {pipeline_parallel_size: 3}\n    replicas: [{gpus: [0, 1]}]\n")


def test_sglang_flags() -> None:
    spec = _specs("models:\n  q:\n    source: a/b\n    engine: sglang\n    max_context: 4096\n"
                  "    replicas: [{gpus: [0, 1]}]\n")["q/0"]
    argv = spec.argv
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert argv[argv.index("--model-path") + 1] == "a/b"
    assert argv[argv.index("--tp-size") + 1] == "2"
    assert argv[argv.index("--context-length") + 1] == "4096"


def test_transformers_cpu_and_gpu_devices(tmp_path: Path) -> None:
    specs = _specs(f"""
models:
  cpu:
    source: {tmp_path}
    replicas: [{{}}]
  one:
    source: {tmp_path}
    replicas: [{{gpus: [1]}}]
  two:
    source: {tmp_path}
    replicas: [{{gpus: [2, 3]}}]
""")
    cpu, one, two = specs["cpu/0"], specs["one/0"], specs["two/0"]
    assert cpu.argv[cpu.argv.index("--device") + 1] == "cpu"
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == "" and cpu.env["HF_HUB_OFFLINE"] == "1"
    assert "--continuous-batching" not in cpu.argv
    assert one.argv[one.argv.index("--device") + 1] == "cuda:0"
    assert "--continuous-batching" in one.optional_flags
    assert two.argv[two.argv.index("--device") + 1] == "auto"
    assert cpu.upstream_model == str(tmp_path)


def test_ports_are_assigned_without_clashes() -> None:
    specs = _specs("models:\n  a:\n    source: a/b\n    engine: vllm\n"
                   "    replicas: [{gpus: [0], port: 8100}, {gpus: [1], role: backup}]\n")
    ports = {s.base_url.rsplit(":", 1)[1] for s in specs.values()}
    assert len(ports) == 2 and "8100" in ports


def test_remote_replica_is_not_started() -> None:
    spec = _specs("models:\n  a:\n    source: a/b\n    engine: vllm\n"
                  "    replicas: [{url: 'http://10.0.0.2:8000/'}]\n")["a/0"]
    assert spec.remote and spec.base_url == "http://10.0.0.2:8000"
    assert preflight(spec) is spec


def test_preflight_against_the_real_transformers_serve(tmp_path: Path) -> None:
    """The installed `transformers serve --help` accepts what we emit and refuses a made-up flag."""
    good = _specs(f"models:\n  a:\n    source: {tmp_path}\n    replicas: [{{}}]\n")["a/0"]
    assert preflight(good).argv == good.argv
    bad = _specs(f"models:\n  a:\n    source: {tmp_path}\n"
                 "    engine_args: {enable_flash_attention: true}\n    replicas: [{}]\n")["a/0"]
    with pytest.raises(EngineError, match=r"a/0: the installed transformers does not accept "
                                          r"--enable-flash-attention"):
        preflight(bad)


def test_preflight_drops_optional_flags_the_engine_lacks(tmp_path: Path) -> None:
    import dataclasses

    spec = _specs(f"models:\n  a:\n    source: {tmp_path}\n    replicas: [{{}}]\n")["a/0"]
    spec = dataclasses.replace(spec, argv=[*spec.argv, "--no-such-optional"],
                               optional_flags=("--no-such-optional",))
    assert "--no-such-optional" not in preflight(spec).argv


def test_missing_engine_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="engine command not found"):
        accepted_flags(["/nonexistent/vllm", "serve", "--help"])
    with pytest.raises(EngineError, match="is the engine installed"):
        accepted_flags([sys.executable, "-m", "no_such_engine_module", "--help"])
