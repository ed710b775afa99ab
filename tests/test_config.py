"""Stack-file validation: every broken file gives one line naming file:line and field, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from homellm.config import load_stack, parse_stack, read_yaml_mapping
from homellm.errors import ConfigError

GOOD = """\
models:
  qwen:
    source: Qwen/Qwen3-30B-A3B
    engine: vllm
    replicas:
      - {gpus: [0], role: primary}
      - {gpus: [1], role: backup}
gateway:
  listen: 127.0.0.1:8080
"""

BROKEN = [
    # (stack text, expected fragment of the message, expected line)
    ("models:\n  a:\n    source: x/y\n    engine: vllmx\n    replicas: [{gpus: [0]}]\n",
     "models.a.engine: expected 'transformers', 'vllm', 'sglang' or 'llamacpp', got 'vllmx'", 4),
    ("models:\n  a:\n    source: x/y\n    engine: vllm\n    replicas:\n      - {gpus: [0]}\n"
     "      - {gpus: [0], role: backup}\n",
     "models.a.replicas.1.gpus: GPU 0 is already used by models.a.replicas.0", 7),
    ("models:\n  a:\n    source: x/y\n    replicas:\n      - {port: 9001}\n"
     "      - {port: 9001, role: backup}\n",
     "models.a.replicas.1.port: port 9001 is already used by models.a.replicas.0", 6),
    ("models:\n  a:\n    source: x/y\n    replicas:\n      - {port: 8080}\n",
     "port 8080 is already used by gateway", 5),
    ("models:\n  a:\n    source: x/y\n    replicas: [{gpus: [0]}\n", "YAML syntax error", 5),
    ("models:\n  a:\n    source: x/y\n    replicas: [{gpus: [1, 1]}]\n",
     "a GPU is listed twice", 4),
    ("models:\n  a:\n    source: x/y\n    replicas: [{role: backup}]\n",
     "at least one replica must be primary", 4),
    ("models:\n  a:\n    source: x/y\n    replicas: [{role: standby}]\n",
     "expected 'primary' or 'backup', got 'standby'", 4),
    ("models:\n  a:\n    source: x/y\n    engin: vllm\n    replicas: [{}]\n",
     "models.a.engin: unknown field", 4),
    ("models:\n  a:\n    engine: vllm\n    replicas: [{gpus: [0]}]\n",
     "models.a.source: required field is missing", 2),
    ("models:\n  a:\n    source: x/y\n    replicas: [{}]\ngateway:\n  listen: 8080\n",
     "gateway.listen: expected HOST:PORT (like 127.0.0.1:8080), got '8080'", 6),
    ("models:\n  a:\n    source: x/y\n    engine: vllm\n    replicas: [{}]\n",
     "models.a.replicas.0.gpus: vllm needs at least one GPU", 5),
    ("- just\n- a list\n", "expected a mapping with a 'models:' section", 1),
    ("models:\n  a:\n    source: x/y\n    engine: vllm\n    replicas: [{gpus: [0]}]\n"
     "    engine: sglang\n", "models.a.engine: duplicate key (first at line 4)", 6),
    ("models:\n  a:\n    source: x/y\n    replicas:\n      - port: 9000\n        port: 9001\n",
     "models.a.replicas.0.port: duplicate key (first at line 5)", 6),
    ("models:\n  a: {source: x/y, replicas: [{}]}\nmodels:\n  b: {source: x/y, replicas: [{}]}\n",
     "models: duplicate key (first at line 1)", 3),
    ("models:\n  a:\n    source: x/y\n    replicas: [{}]\ngateway:\n  health: {interval_s: 1}\n"
     "  listen: 0.0.0.0:8080\n",
     "gateway.listen: 0.0.0.0:8080 is not loopback, and no API keys are configured", 7),
    ("models:\n  a:\n    source: x/y\n    replicas: [{}]\ngateway:\n  listen: '[::]:8080'\n",
     "gateway.listen: [::]:8080 is not loopback", 6),
]


def test_good_stack_parses() -> None:
    stack = parse_stack(GOOD)
    assert [r.role for r in stack.models["qwen"].replicas] == ["primary", "backup"]
    assert stack.gateway.port == 8080


@pytest.mark.parametrize(("text", "fragment", "line"), BROKEN)
def test_broken_stack_names_file_line_and_field(text: str, fragment: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_stack(text, "stack.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"stack.yaml:{line}: "), message
    assert fragment in message
    assert info.value.exit_code == 2


def test_missing_model_folder(tmp_path: Path) -> None:
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  a:\n    source: ./no-such-model\n    replicas: [{}]\n")
    with pytest.raises(ConfigError, match=r"homellm.yaml:3: models.a.source: model "
                                          r"'./no-such-model' not found"):
        load_stack(stack)
    stack.write_text(f"models:\n  a:\n    source: {tmp_path}\n    replicas:\n"
                     "      - {role: primary}\n      - role: backup\n        engine: llamacpp\n"
                     "        source: ./missing.gguf\n")
    with pytest.raises(ConfigError, match=r"homellm.yaml:8: models.a.replicas.1.source: model "
                                          r"'./missing.gguf' not found"):
        load_stack(stack)


def test_replica_overrides_engine_source_and_args() -> None:
    stack = parse_stack("models:\n  a:\n    source: org/model\n    engine: vllm\n"
                        "    engine_args: {enforce_eager: true}\n    replicas:\n"
                        "      - {gpus: [0]}\n"
                        "      - {role: backup, engine: llamacpp, source: /m.gguf,"
                        " engine_args: {}}\n")
    model = stack.models["a"]
    primary, backup = (model.for_replica(r) for r in model.replicas)
    assert (primary.engine, primary.source, primary.engine_args) == (
        "vllm", "org/model", {"enforce_eager": True})
    assert (backup.engine, backup.source, backup.engine_args) == ("llamacpp", "/m.gguf", {})
    with pytest.raises(ConfigError, match=r"replicas\.0\.gpus: sglang needs at least one GPU"):
        parse_stack("models:\n  a:\n    source: o/m\n    replicas: [{engine: sglang}]\n")


def test_relative_source_resolves_against_stack_folder(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    stack = tmp_path / "homellm.yaml"
    stack.write_text("models:\n  a:\n    source: ./m\n    replicas: [{}]\n")
    assert load_stack(stack).models["a"].source == str((tmp_path / "m").resolve())


def test_check_cli_exit_code_and_one_line(tmp_path: Path) -> None:
    stack = tmp_path / "bad.yaml"
    stack.write_text(BROKEN[0][0])
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "check", "-c", str(stack)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml:4: models.a.engine" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_check_cli_missing_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "check", "-c",
                           str(tmp_path / "nope.yaml")], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "stack file not found" in done.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "localhost:8080", "'[::1]:8080'",
                                    "127.0.0.2:8080"])
def test_loopback_needs_no_keys(listen: str) -> None:
    stack = parse_stack(f"models:\n  a: {{source: x/y, replicas: [{{}}]}}\n"
                        f"gateway:\n  listen: {listen}\n")
    assert stack.gateway.api_keys_file is None


def test_beyond_loopback_with_keys_is_valid() -> None:
    stack = parse_stack("models:\n  a: {source: x/y, replicas: [{}]}\n"
                        "gateway:\n  listen: 0.0.0.0:8080\n  api_keys_file: keys.json\n")
    assert stack.gateway.host == "0.0.0.0"


def test_yaml_merge_keys_may_be_overridden() -> None:
    """`<<: *base` then the same key is YAML's override, not a duplicate."""
    stack = parse_stack("models:\n  a:\n    <<: {source: x/y, engine: vllm}\n"
                        "    engine: transformers\n    replicas: [{}]\n")
    assert stack.models["a"].engine == "transformers"


def test_the_run_config_reader_refuses_duplicate_keys_too() -> None:
    """read_yaml_mapping serves the stack file and the train run config alike."""
    with pytest.raises(ConfigError) as info:
        read_yaml_mapping("model:\n  preset: tiny\n  preset: 125m\n", "run.yaml", "a run")
    assert str(info.value) == "run.yaml:3: model.preset: duplicate key (first at line 2)"


def test_where_names_file_line_and_field() -> None:
    stack = parse_stack(GOOD, "stack.yaml")
    assert stack.where("models", "qwen", "engine") == "stack.yaml:4: models.qwen.engine"
    assert stack.where("models", "qwen", "replicas", 1, "gpus") == \
        "stack.yaml:7: models.qwen.replicas.1.gpus"
    assert stack.where("models", "qwen", "engine_args", "x") == \
        "stack.yaml:2: models.qwen.engine_args.x"  # not in the file: its nearest parent's line
