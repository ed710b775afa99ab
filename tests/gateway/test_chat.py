"""`homellm chat` as a user runs it (typer's CliRunner on the real command). Endpoint cases talk
over loopback HTTP to the FAKE OpenAI-compatible backend (homellm.gateway.fakebackend, canned
"t0 t1 ..." tokens), and to a real gateway with API keys in front of it; local cases load the
embedded demo model (tiny random Qwen3 built by homellm.demo, no download) with transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from homellm.cli_chat import chat_command
from homellm.gateway.fakebackend import FakeBackend
from homellm.keys import KeyFile, KeyVerifier
from tests.conftest import free_port
from tests.gateway.conftest import Harness, info

app = typer.Typer()
app.command("chat")(chat_command)


@app.callback()
def _group() -> None:
    """Keeps `chat` a subcommand, as in the real CLI."""


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMELLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)




def chat(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["chat", *args], input=input)


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- endpoint --------------------------------------------------------------------------------


def test_prompt_streams_the_fake_backend_text(harness: Harness) -> None:
    fake = harness.fake(tokens=5)
    result = chat(fake.base_url, "--prompt", "hi", "--max-tokens", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout == "t0 t1 t2 t3 \n"
    assert result.stderr.startswith("4 tokens in ")  # from the server's usage, not chunks
    sent = fake.last_request
    assert sent is not None
    assert sent["model"] == "fake"  # the first id of GET /v1/models
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["stream"] is True and sent["max_tokens"] == 4 and sent["temperature"] == 0.7
    assert sent["stream_options"] == {"include_usage": True} and "top_p" not in sent


def test_json_with_v1_url_system_and_sampling_flags(harness: Harness) -> None:
    fake = harness.fake(tokens=16, name="tiny")
    result = chat(fake.base_url + "/v1/", "--prompt", "hi", "--json", "--max-tokens", "3",
                  "--system", "be brief", "--temperature", "0", "--top-p", "0.5",
                  "--model", "tiny")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["answer"] == "t0 t1 t2 " and out["tokens"] == 3
    assert out["seconds"] > 0 and out["tokens_per_s"] == pytest.approx(3 / out["seconds"], 0.05)
    sent = fake.last_request
    assert sent is not None
    assert sent["messages"] == [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "hi"}]
    assert sent["temperature"] == 0 and sent["top_p"] == 0.5 and sent["model"] == "tiny"


def test_interactive_keeps_history_and_reset_clears_it(harness: Harness) -> None:
    fake = harness.fake(tokens=2)
    seen: list[list[dict[str, str]]] = []
    requests_before = fake.requests

    result = chat(fake.base_url, "--system", "sys", input="one\ntwo\n")  # then Ctrl-D
    assert result.exit_code == 0, result.output
    assert result.stdout.count("t0 t1 \n") == 2 and "2 tokens in" in result.stdout
    assert fake.requests == requests_before + 2
    assert fake.last_request is not None
    seen.append(fake.last_request["messages"])
    assert seen[0] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
                       {"role": "assistant", "content": "t0 t1 "},
                       {"role": "user", "content": "two"}]

    result = chat(fake.base_url, input="one\n/reset\ntwo\n/exit\nnever sent\n")
    assert result.exit_code == 0, result.output
    assert fake.last_request is not None
    assert fake.last_request["messages"] == [{"role": "user", "content": "two"}]
    assert fake.requests == requests_before + 4


def test_api_key_reaches_a_gateway_that_checks_keys(harness: Harness, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake = harness.fake(tokens=3)
    gw = harness.gateway([info(fake, "tiny/0")])
    good = KeyFile(tmp_path / "keys.json").add("alice")
    gw.gw.keys = KeyVerifier(tmp_path / "keys.json")

    one_line_error(chat(gw.url, "--prompt", "hi"), gw.url, "HTTP 401")
    one_line_error(chat(gw.url, "--prompt", "hi", "--api-key", "sk-wrong"), "HTTP 401")
    assert fake.requests == 0

    result = chat(gw.url, "--prompt", "hi", "--api-key", good)
    assert result.exit_code == 0, result.output
    assert result.stdout == "t0 t1 t2 \n"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("HOMELLM_API_KEY", good)  # preferred over OPENAI_API_KEY
    assert chat(gw.url, "--prompt", "hi").stdout == "t0 t1 t2 \n"
    monkeypatch.delenv("HOMELLM_API_KEY")
    one_line_error(chat(gw.url, "--prompt", "hi"), "HTTP 401")
    assert fake.requests == 2


def test_endpoint_errors_are_one_line(harness: Harness) -> None:
    fake = harness.fake(fail_status=503)
    one_line_error(chat(fake.base_url, "--prompt", "hi"),
                   "HTTP 503", f"fake backend {fake.name} told to fail")
    fake.fail_status = None
    one_line_error(chat(fake.base_url, "--prompt", "hi", "--model", "nope"),
                   "unknown model 'nope'", "fake")
    one_line_error(chat(fake.base_url + "/nowhere", "--prompt", "hi"), "HTTP 404", "no route")
    result = chat(fake.base_url, "--prompt", "hi", "--max-tokens", "0")
    assert result.exit_code == 2 and "--max-tokens" in result.stderr
    url = f"http://127.0.0.1:{free_port()}"
    one_line_error(chat(url, "--prompt", "hi"), f"{url}: cannot connect (")


def test_fake_backend_that_dies_mid_stream_is_one_error(harness: Harness) -> None:
    fake: FakeBackend = harness.fake(tokens=8, die_after=2)
    result = chat(fake.base_url, "--prompt", "hi")
    one_line_error(result, fake.base_url, "the connection broke")
    assert result.stdout == "t0 t1 \n"  # what arrived was shown as it came


# -- local model folder ----------------------------------------------------------------------


def test_local_greedy_is_streamed_and_repeatable(demo_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runs = []
    for _ in range(2):
        result = chat(str(demo_model), "--prompt", "hi", "--temperature", "0",
                      "--max-tokens", "8", "--json")
        assert result.exit_code == 0, result.output
        runs.append(json.loads(result.stdout))
    assert runs[0]["answer"] and runs[0]["answer"] == runs[1]["answer"]
    assert runs[0]["tokens"] == 8  # random weights: no eos within 8 tokens

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, temperature=None,
                             top_p=None, top_k=None)
    prompt_len = ids["input_ids"].shape[1]
    assert runs[0]["answer"] == tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)

    result = chat(str(demo_model), "--prompt", "hi", "--max-tokens", "8", "--top-p", "0.9")
    assert result.exit_code == 0 and result.stdout.strip("\n")
    assert result.stderr.startswith("8 tokens in ")


def test_folders_that_cannot_chat(tmp_path: Path, demo_model: Path) -> None:
    one_line_error(chat(str(tmp_path), "--prompt", "hi"),
                   f"{tmp_path}: neither a model folder (no config.json) nor an http(s) URL")
    one_line_error(chat(str(tmp_path / "missing"), "--prompt", "hi"), "neither a model folder")

    plain = tmp_path / "no-template"
    shutil.copytree(demo_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    one_line_error(chat(str(plain), "--prompt", "hi"), "no chat template")
