"""llama.cpp adapter: the exact commands for both servers, GGUF conversion, and a real server."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from homellm.config import ModelConfig, ReplicaConfig, parse_stack
from homellm.engines import gguf as gguf_mod
from homellm.engines.base import LaunchSpec
from homellm.engines.gguf import convert_to_gguf, find_converter, install_converter
from homellm.engines.llamacpp import LlamaCppAdapter
from homellm.engines.preflight import accepted_flags
from homellm.engines.registry import adapter_for, resolve_stack
from homellm.errors import EngineError
from tests.conftest import free_port

PY_SERVER = [sys.executable, "-m", "llama_cpp.server"]
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
NO_LLAMA_CPP = "llama-cpp-python is not installed (bash .ci/install-llamacpp.sh installs it)"


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


@pytest.fixture
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``llama-server`` on PATH, so the adapter picks llama.cpp's own binary."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "llama-server"
    exe.write_text("#!/bin/sh\necho '--port --host --model'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


def _launch(adapter: LlamaCppAdapter, source: Path | str, gpus: list[int] | None = None,
            port: int = 8101, **model: object) -> LaunchSpec:
    config = ModelConfig(source=str(source), engine="llamacpp",
                         replicas=[ReplicaConfig(gpus=gpus or [])], **model)
    return adapter.launch("tiny", config, config.replicas[0], 0, port)


# ---- llama_cpp.server (llama-cpp-python) ------------------------------------------------------

def test_python_server_command(gguf_file: Path) -> None:
    adapter = LlamaCppAdapter(server="llama_cpp.server")
    spec = _launch(adapter, gguf_file, max_context=4096)
    assert spec.argv == [*PY_SERVER, "--model", str(gguf_file), "--host", "127.0.0.1",
                         "--port", "8101", "--model_alias", "tiny",
                         "--interrupt_requests", "False", "--n_ctx", "4096"]
    assert spec.env == {"CUDA_VISIBLE_DEVICES": ""}
    assert spec.base_url == "http://127.0.0.1:8101"
    assert spec.health_url == "http://127.0.0.1:8101/v1/models"  # it has no /health
    assert spec.upstream_model == "tiny"
    assert (spec.engine, spec.replica, spec.role) == ("llamacpp", "tiny/0", "primary")
    # underscores kept as the engine spells them, so the preflight finds them in its --help
    assert adapter.flags_to_check(spec) == sorted(
        ["--model", "--host", "--port", "--model_alias", "--interrupt_requests", "--n_ctx"])
    assert adapter.help_argv(spec) == [*PY_SERVER, "--help"]


def test_python_server_gpus(gguf_file: Path) -> None:
    adapter = LlamaCppAdapter(server="llama_cpp.server")
    one = _launch(adapter, gguf_file, gpus=[3])
    assert one.env == {"CUDA_VISIBLE_DEVICES": "3"}
    assert one.argv[-2:] == ["--n_gpu_layers", "-1"] and "--tensor_split" not in one.argv
    two = _launch(adapter, gguf_file, gpus=[0, 1])
    assert two.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert two.argv[-5:] == ["--n_gpu_layers", "-1", "--tensor_split", "1", "1"]
    assert two.gpus == [0, 1]
    # device: cpu keeps every layer on the CPU even when GPUs are listed
    cpu = _launch(adapter, gguf_file, gpus=[0], device="cpu")
    assert "--n_gpu_layers" not in cpu.argv


def test_python_server_engine_args(gguf_file: Path) -> None:
    adapter = LlamaCppAdapter(server="llama_cpp.server")
    spec = _launch(adapter, gguf_file, max_context=2048,
                   engine_args={"n-batch": 256, "verbose": False, "interrupt_requests": True,
                                "n_ctx": 1024, "chat_format": "chatml"})
    # engine_args come last in its spelling; bools carry a value; ours are not repeated
    assert spec.argv[3:] == ["--model", str(gguf_file), "--host", "127.0.0.1", "--port", "8101",
                             "--model_alias", "tiny", "--n_batch", "256", "--verbose", "False",
                             "--interrupt_requests", "True", "--n_ctx", "1024",
                             "--chat_format", "chatml"]


# ---- llama-server (llama.cpp's own binary) ----------------------------------------------------

def test_llama_server_command(gguf_file: Path, fake_llama_server: Path) -> None:
    adapter = LlamaCppAdapter()  # auto: llama-server is on PATH
    spec = _launch(adapter, gguf_file, port=8200, max_context=8192)
    assert spec.argv == [str(fake_llama_server), "--model", str(gguf_file), "--host", "127.0.0.1",
                         "--port", "8200", "--alias", "tiny", "--ctx-size", "8192"]
    assert spec.health_url == "http://127.0.0.1:8200/health"
    assert spec.env == {"CUDA_VISIBLE_DEVICES": ""}
    assert spec.upstream_model == "tiny"
    assert adapter.help_argv(spec) == [str(fake_llama_server), "--help"]
    assert adapter.flags_to_check(spec) == ["--alias", "--ctx-size", "--host", "--model", "--port"]


def test_llama_server_gpus_and_engine_args(gguf_file: Path, fake_llama_server: Path) -> None:
    adapter = LlamaCppAdapter(server="llama-server")
    one = _launch(adapter, gguf_file, gpus=[1])
    assert one.env == {"CUDA_VISIBLE_DEVICES": "1"}
    assert one.argv[-2:] == ["--n-gpu-layers", "999"]
    three = _launch(adapter, gguf_file, gpus=[0, 1, 2], max_context=4096,
                    engine_args={"parallel": 4, "ctx_size": 16384, "metrics": True})
    assert three.argv[1:] == ["--model", str(gguf_file), "--host", "127.0.0.1", "--port", "8101",
                              "--alias", "tiny", "--n-gpu-layers", "999",
                              "--tensor-split", "1,1,1", "--parallel", "4", "--ctx-size",
                              "16384", "--metrics"]


def test_llama_server_forced_but_missing(gguf_file: Path, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="llama-server is not on PATH"):
        _launch(LlamaCppAdapter(server="llama-server"), gguf_file)
    auto = _launch(LlamaCppAdapter(), gguf_file)  # falls back to llama-cpp-python's server
    assert auto.argv[:3] == PY_SERVER


def test_ipv6_host_in_urls(gguf_file: Path) -> None:
    config = ModelConfig(source=str(gguf_file), engine="llamacpp",
                         replicas=[ReplicaConfig(host="::1")])
    spec = LlamaCppAdapter(server="llama_cpp.server").launch("tiny", config, config.replicas[0],
                                                             0, 9000)
    assert spec.health_url == "http://[::1]:9000/v1/models"
    assert spec.argv[spec.argv.index("--host") + 1] == "::1"


# ---- sources that are not a .gguf -------------------------------------------------------------

def test_hf_folder_is_refused_with_the_conversion_command(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(EngineError) as caught:
        _launch(LlamaCppAdapter(server="llama_cpp.server"), folder)
    message = str(caught.value)
    assert "\n" not in message
    assert "Hugging Face folder" in message
    assert f"homellm gguf {folder} {tmp_path / 'tiny-hf.gguf'}" in message


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda p: p / "missing.gguf", "not found"),
    (lambda p: p, "is a folder"),
    (lambda p: (p / "x.bin").write_bytes(b"PK\3\4") and p / "x.bin", "not a GGUF file"),
])
def test_bad_sources(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(EngineError, match=fragment):
        _launch(LlamaCppAdapter(server="llama_cpp.server"), make(tmp_path))


def test_hub_id_is_refused() -> None:
    with pytest.raises(EngineError, match="hub id"):
        _launch(LlamaCppAdapter(server="llama_cpp.server"), "Qwen/Qwen3-0.6B-GGUF")


def test_registry_resolves_a_llamacpp_stack(gguf_file: Path, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-server: llama-cpp-python's server
    stack = parse_stack(f"models:\n  tiny:\n    source: {gguf_file}\n    engine: llamacpp\n"
                        "    max_context: 512\n    replicas: [{port: 8150}, {role: backup}]\n")
    specs = resolve_stack(stack)
    assert isinstance(adapter_for("llamacpp"), LlamaCppAdapter)
    assert [s.replica for s in specs] == ["tiny/0", "tiny/1"]
    assert specs[0].argv[:3] == PY_SERVER and "--n_ctx" in specs[0].argv
    assert specs[0].health_url == "http://127.0.0.1:8150/v1/models"


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason=NO_LLAMA_CPP)
def test_every_python_server_flag_is_in_its_help(gguf_file: Path) -> None:
    adapter = LlamaCppAdapter(server="llama_cpp.server")
    spec = _launch(adapter, gguf_file, gpus=[0, 1], max_context=512)
    flags = accepted_flags(adapter.help_argv(spec))
    assert set(adapter.flags_to_check(spec)) <= flags


# ---- the converter ----------------------------------------------------------------------------

FAKE_CONVERTER = """\
import sys
from pathlib import Path

class TextModel:
    def get_vocab_base_pre(self, tokenizer):
        raise NotImplementedError("BPE pre-tokenizer was not recognized")

def main():
    args = sys.argv[1:]
    out = Path(args[args.index("--outfile") + 1])
    if (Path(args[0]) / "fail").exists():
        print("Traceback (most recent call last):", file=sys.stderr)
        raise RuntimeError("tensor blk.0.attn_q.weight has a bad shape")
    out.write_bytes(b"GGUF" + TextModel().get_vocab_base_pre(None).encode())
"""


@pytest.fixture
def fake_converter(tmp_path: Path) -> Path:
    folder = tmp_path / "llama.cpp"
    (folder / "gguf-py").mkdir(parents=True)
    script = folder / "convert_hf_to_gguf.py"
    script.write_text(FAKE_CONVERTER)
    return script


def _hf_folder(path: Path, pre_tokenizer: dict[str, object]) -> Path:
    import json

    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": pre_tokenizer}))
    return path


def test_convert_applies_gpt2_fix_and_writes_atomically(tmp_path: Path,
                                                        fake_converter: Path) -> None:
    model = _hf_folder(tmp_path / "hf", {"type": "ByteLevel", "add_prefix_space": False,
                                         "use_regex": True})
    out = tmp_path / "out" / "model.gguf"
    assert convert_to_gguf(model, out, converter=fake_converter) == out
    assert out.read_bytes() == b"GGUFgpt-2"
    assert os.listdir(out.parent) == ["model.gguf"]  # no temp file left behind
    assert out.stat().st_mode & 0o777 == 0o644


def test_convert_keeps_refusing_other_unknown_tokenizers(tmp_path: Path,
                                                         fake_converter: Path) -> None:
    model = _hf_folder(tmp_path / "hf", {"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(EngineError, match="NotImplementedError: BPE pre-tokenizer was not"):
        convert_to_gguf(model, tmp_path / "m.gguf", converter=fake_converter)


def test_convert_failure_is_one_line_with_the_last_stderr_line(tmp_path: Path,
                                                               fake_converter: Path) -> None:
    model = _hf_folder(tmp_path / "hf", {"type": "ByteLevel"})
    (model / "fail").touch()
    out = tmp_path / "m.gguf"
    with pytest.raises(EngineError) as caught:
        convert_to_gguf(model, out, converter=fake_converter)
    assert str(caught.value) == (f"GGUF conversion of {model} failed: "
                                 "RuntimeError: tensor blk.0.attn_q.weight has a bad shape")
    assert sorted(os.listdir(tmp_path)) == ["hf", "llama.cpp"]  # no output, no temp file


def test_convert_without_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _hf_folder(tmp_path / "hf", {"type": "ByteLevel"})
    monkeypatch.setenv(gguf_mod.CONVERTER_ENV, str(tmp_path / "nowhere.py"))
    monkeypatch.setattr(gguf_mod, "installed_converter_dir", lambda: tmp_path / "none")
    assert find_converter() is None
    with pytest.raises(EngineError, match=r"converter \(convert_hf_to_gguf.py\) was not found"):
        convert_to_gguf(model, tmp_path / "m.gguf")
    with pytest.raises(EngineError, match=r"no config\.json"):
        convert_to_gguf(tmp_path, tmp_path / "m.gguf")
    with pytest.raises(EngineError, match="unknown GGUF outtype"):
        convert_to_gguf(model, tmp_path / "m.gguf", outtype="q4_k_m")


def test_find_converter_honours_the_env_var(fake_converter: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gguf_mod.CONVERTER_ENV, str(fake_converter))
    assert find_converter() == fake_converter


def test_install_converter_from_an_sdist(tmp_path: Path) -> None:
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    files = {
        "vendor/llama.cpp/convert_hf_to_gguf.py": b"# converter\n",
        "vendor/llama.cpp/conversion/base.py": b"class TextModel: ...\n",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
        "vendor/llama.cpp/src/llama.cpp": b"// not wanted\n",
        "llama_cpp/server/app.py": b"# not wanted\n",
    }
    with tarfile.open(sdist, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    dest = tmp_path / "share" / "llama.cpp"
    script = install_converter(sdist, dest)
    assert script == dest / "convert_hf_to_gguf.py"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "conversion/base.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py",
        "homellm-source.txt"]
    assert gguf_mod.converter_source(script) == sdist.name
    assert install_converter(sdist, dest) == script  # again: replaced whole, nothing left over
    assert sorted(os.listdir(dest.parent)) == ["llama.cpp"]
    empty = tmp_path / "not-llama.tar.gz"
    with tarfile.open(empty, "w:gz") as archive:
        info = tarfile.TarInfo("pkg-1.0/setup.py")
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(EngineError, match=r"has no vendor/llama\.cpp/convert_hf_to_gguf\.py"):
        install_converter(empty, tmp_path / "other")
    assert not (tmp_path / "other").exists()


# ---- the real thing ---------------------------------------------------------------------------

def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not ready in {timeout_s} s: {log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason=NO_LLAMA_CPP)
def test_real_llama_cpp_server(demo_model: Path, tmp_path: Path) -> None:
    from openai import OpenAI

    started = time.monotonic()
    gguf = convert_to_gguf(demo_model, tmp_path / "demo.gguf")
    converted_s = time.monotonic() - started
    assert gguf.read_bytes()[:4] == b"GGUF"

    adapter = LlamaCppAdapter(server="llama_cpp.server")
    config = ModelConfig(source=str(gguf), engine="llamacpp", max_context=512,
                         replicas=[ReplicaConfig()])
    spec = adapter.launch("tiny", config, config.replicas[0], 0, free_port())
    assert set(adapter.flags_to_check(spec)) <= accepted_flags(adapter.help_argv(spec))

    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_s = _wait_ready(spec.health_url, proc, log, timeout_s=120)
        client = OpenAI(base_url=spec.base_url + "/v1", api_key="unused", max_retries=0,
                        timeout=60)
        assert "tiny" in [m.id for m in client.models.list().data]
        messages = [{"role": "user", "content": "Привет! Hello"}]
        reply = client.chat.completions.create(model=spec.upstream_model, messages=messages,
                                               max_tokens=8, temperature=0, seed=1)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage is not None and reply.usage.completion_tokens <= 8
        again = client.chat.completions.create(model=spec.upstream_model, messages=messages,
                                               max_tokens=8, temperature=0, seed=1)
        assert again.choices[0].message.content == reply.choices[0].message.content

        chunks = list(client.chat.completions.create(
            model=spec.upstream_model, messages=messages, max_tokens=8, stream=True))
        assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert isinstance(streamed, str)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(httpx.ConnectError):
        httpx.get(spec.health_url, timeout=2.0)
    print(f"\nllama_cpp.server: converted in {converted_s:.1f} s, ready in {ready_s:.1f} s")
