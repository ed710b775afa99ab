"""API keys at the gateway, against FAKE backends (homellm.gateway.fakebackend): the openai
client gets its typed 401/403 exceptions, a good key works, keys filter /v1/models."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from homellm.keys import KeyFile, KeyVerifier
from tests.gateway.conftest import MODEL, Harness, info

MESSAGES = [{"role": "user", "content": "hi"}]


def test_keys_guard_the_openai_routes(harness: Harness, tmp_path: Path) -> None:
    fake, other = harness.fake(name="a"), harness.fake(name="b")
    gw = harness.gateway([info(fake, "tiny/0"), info(other, "other/0", model="other")])
    keys = KeyFile(tmp_path / "keys.json")
    good, limited = keys.add("alice"), keys.add("bob", models=["other"])
    gw.gw.keys = KeyVerifier(tmp_path / "keys.json")
    base = f"http://127.0.0.1:{gw.port}/v1"

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=base, api_key=key, max_retries=0)

    for bad in ("", "sk-wrong", good + "x"):
        with pytest.raises(openai.AuthenticationError):
            client(bad or "none").chat.completions.create(model=MODEL, messages=MESSAGES)
    raw = httpx.post(f"{base}/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "invalid_api_key"
    reply = client(good).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert reply.choices
    assert list(client(good).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     max_tokens=2, stream=True))
    with pytest.raises(openai.PermissionDeniedError):
        client(limited).chat.completions.create(model=MODEL, messages=MESSAGES)
    raw = httpx.post(f"{base}/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                     headers={"Authorization": f"Bearer {limited}"})
    assert raw.status_code == 403 and raw.json()["error"]["code"] == "model_not_allowed"
    assert client(limited).chat.completions.create(model="other", messages=MESSAGES).choices
    assert [m.id for m in client(limited).models.list()] == ["other"]
    with pytest.raises(openai.AuthenticationError):
        client("sk-wrong").models.list()
    assert fake.requests == 2  # refused requests never reached a backend
