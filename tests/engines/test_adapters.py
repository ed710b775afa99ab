"""Engine commands built from stack files, and the --help preflight against a real engine."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from homellm.config import parse_stack
from homellm.engines.base import LaunchSpec
from homellm.engines.preflight import accepted_flags, preflight
from homellm.engines.registry import resolve_stack
from homellm.errors import ConfigError, EngineError


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
    assert "--enforce-eager" in argv and "--no-skipped" in argv and "--skipped" not in argv
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
    with pytest.raises(ConfigError, match=r"homellm.yaml:4: models.a.engine_args."
                                          r"enable_flash_attention: the installed transformers "
                                          r"does not accept --enable-flash-attention"):
        preflight(bad)
    import dataclasses  # a flag homellm adds itself: the engine, not the file, is at odds

    ours = dataclasses.replace(good, argv=[*good.argv, "--made-up"])
    with pytest.raises(EngineError, match=r"a/0: the installed transformers does not accept "
                                          r"--made-up .*homellm emits the flags of transformers "
                                          r"5\.23\.0$"):
        preflight(ours)


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


VLLM_FALSE = """
models:
  q:
    source: Qwen/Qwen3-30B-A3B
    engine: vllm
    engine_args:
      enable_prefix_caching: false
      enforce_eager: false
      disable_sliding_window: false
    replicas: [{gpus: [0]}]
"""


def test_vllm_false_is_its_negative_form() -> None:
    """vLLM 0.33 pairs --enable-x with --disable-x (EnableDisableAction) and other booleans with
    --no-x: `enable_prefix_caching: false` must turn prefix caching off, not leave it on."""
    argv = _specs(VLLM_FALSE)["q/0"].argv
    assert argv[-3:] == ["--disable-prefix-caching", "--no-enforce-eager",
                         "--enable-sliding-window"]
    assert "--enable-prefix-caching" not in argv


@pytest.mark.parametrize(("engine", "key", "negative"), [
    ("vllm", "disable_log_stats", "--no-disable-log-stats"),  # store_true in arg_utils.py
    ("vllm", "headless", "--no-headless"),
    ("sglang", "enable_torch_compile", "--no-enable-torch-compile"),  # store_true by default
])
def test_false_without_a_negative_form_is_refused_at_its_line(engine: str, key: str,
                                                               negative: str) -> None:
    text = (f"models:\n  q:\n    source: a/b\n    engine: {engine}\n    engine_args:\n"
            f"      max_num_seqs: 8\n      {key}: false\n    replicas: [{{gpus: [0]}}]\n")
    with pytest.raises(ConfigError) as info:
        resolve_stack(parse_stack(text, "stack.yaml"))
    assert str(info.value) == (f"stack.yaml:7: models.q.engine_args.{key}: false, but {engine} "
                               f"has no {negative}; remove it or set true")
    assert info.value.exit_code == 2


def test_sglang_false_where_its_parser_has_the_negative() -> None:
    argv = _specs("models:\n  q:\n    source: a/b\n    engine: sglang\n"
                  "    engine_args: {dllm_fdfo: false, enable_torch_compile: true}\n"
                  "    replicas: [{gpus: [0]}]\n")["q/0"].argv
    assert argv[-2:] == ["--no-dllm-fdfo", "--enable-torch-compile"]


def test_transformers_false_is_typers_negative_form(tmp_path: Path) -> None:
    spec = _specs(f"models:\n  a:\n    source: {tmp_path}\n"
                  "    engine_args: {continuous_batching: false, compile: false}\n"
                  "    replicas: [{gpus: [0]}]\n")["a/0"]
    assert spec.argv[-2:] == ["--no-continuous-batching", "--no-compile"]
    assert "--continuous-batching" not in spec.argv and spec.optional_flags == ()


def test_replica_engine_args_are_located_at_the_replica() -> None:
    text = ("models:\n  q:\n    source: a/b\n    engine: vllm\n"
            "    engine_args: {enforce_eager: true}\n    replicas:\n      - {gpus: [0]}\n"
            "      - gpus: [1]\n        role: backup\n        engine: sglang\n"
            "        engine_args:\n          enable_torch_compile: false\n")
    with pytest.raises(ConfigError, match=r"^stack.yaml:12: models.q.replicas.1.engine_args."
                                          r"enable_torch_compile: false, but sglang has no"):
        resolve_stack(parse_stack(text, "stack.yaml"))
    specs = {s.replica: s for s in resolve_stack(parse_stack(text.replace(
        "enable_torch_compile: false", "enable_torch_compile: true"), "stack.yaml"))}
    assert specs["q/0"].arg_origins["--enforce-eager"].where == \
        "stack.yaml:5: models.q.engine_args.enforce_eager"
    assert specs["q/1"].arg_origins["--enable-torch-compile"].where == \
        "stack.yaml:12: models.q.replicas.1.engine_args.enable_torch_compile"


def test_llama_server_false_flags() -> None:
    from homellm.engines.llamacpp import llama_server_argv, python_server_argv

    model = parse_stack("models:\n  g:\n    source: /m.gguf\n    engine: llamacpp\n"
                        "    engine_args: {cont_batching: false, warmup: false}\n"
                        "    replicas: [{}]\n").models["g"]
    argv = llama_server_argv("llama-server", Path("/m.gguf"), "g", model, "127.0.0.1", 9000, [])
    assert argv[-2:] == ["--no-cont-batching", "--no-warmup"]
    # llama-cpp-python's server takes booleans as values
    python = python_server_argv(Path("/m.gguf"), "g", model, "127.0.0.1", 9000, [])
    assert python[-4:] == ["--cont_batching", "False", "--warmup", "False"]
    model.engine_args = {"mmap": False}  # that commit's common/arg.cpp has --load-mode instead
    with pytest.raises(ConfigError, match=r"engine_args\.mmap: false, but llama-server has no "
                                          r"--no-mmap"):
        llama_server_argv("llama-server", Path("/m.gguf"), "g", model, "127.0.0.1", 9000, [])


def test_every_vllm_boolean_has_the_negative_its_help_lists() -> None:
    """Against `vllm serve --help=all` of the vLLM 0.33.0 wheel (recorded on CPU with
    VLLM_TARGET_DEVICE=cpu): each `--a, --b` pair is a boolean and its negative."""
    from homellm.engines.vllm import VllmAdapter

    text = (Path(__file__).parent / "data" / "vllm-0.33.0-serve-help-all.txt").read_text()
    pairs = re.findall(r"^  (--[a-z0-9-]+), (--[a-z0-9-]+)$", text, re.MULTILINE)
    assert len(pairs) >= 80
    false_flags = VllmAdapter.false_flags
    assert [(a, b) for a, b in pairs if false_flags.negative(a) != b] == []
    for flag in false_flags.store_true:
        assert re.search(rf"^  {flag}(, -[a-z]|  | \[|$)", text, re.MULTILINE), flag
        assert not any(flag in pair for pair in pairs), flag


def test_preflight_refuses_an_engine_args_flag_at_its_line(tmp_path: Path) -> None:
    """Against the real `transformers serve --help`: an unknown flag from engine_args, or a
    false one whose --no- form it lacks, is a config error (exit 2) at that entry's line."""
    text = (f"models:\n  a:\n    source: {tmp_path}\n    engine_args:\n      compile: false\n"
            "      {key}: {value}\n    replicas: [{{}}]\n")
    good = resolve_stack(parse_stack(text.format(key="enable_cors", value="false"), "s.yaml"))
    assert preflight(good[0]).argv[-2:] == ["--no-compile", "--no-enable-cors"]
    for value, message in (("true", "the installed transformers does not accept --no-such-flag "
                                    "(checked with 'transformers.cli.transformers serve "
                                    "--help'); remove it or correct its name"),
                           ("false", "false, but the installed transformers has no "
                                     "--no-no-such-flag; remove it or set true")):
        (spec,) = resolve_stack(parse_stack(text.format(key="no_such_flag", value=value),
                                            "s.yaml"))
        with pytest.raises(ConfigError) as info:
            preflight(spec)
        assert str(info.value).startswith(f"s.yaml:6: models.a.engine_args.no_such_flag: "
                                          f"{message}"), str(info.value)
