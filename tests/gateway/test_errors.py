"""Errors in OpenAI's shape from the gateway (in front of a FAKE backend), seen with raw httpx
(status + body) and with the openai client (typed exceptions)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from homellm.config import LimitsConfig
from tests.conftest import free_port
from tests.gateway.conftest import MODEL, Harness, RunningGateway, info

MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw(harness: Harness) -> RunningGateway:
    fake = harness.fake(name="fake-a")
    return harness.gateway(
        [info(fake, "tiny/0"), info(free_port(), "dead/0", model="dead")],
        wait_ready=["tiny/0"],
    )


def assert_openai_error(response: Any, status: int, code: str | None, param: str | None = None):
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["message"]
    return error


def test_fake_gateway_400_malformed_json(gw: RunningGateway) -> None:
    with gw.http() as http:
        response = http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        error = assert_openai_error(response, 400, "invalid_json")
        assert error["type"] == "invalid_request_error"
        assert_openai_error(http.post("/v1/completions", content=b"[1, 2]"), 400, "invalid_json")
        assert_openai_error(http.post("/v1/embeddings", content=b"\xff\xfe"), 400, "invalid_json")
    with pytest.raises(openai.BadRequestError, match="JSON object") as caught:
        gw.openai().post("/chat/completions", cast_to=object, body=[1, 2])
    assert caught.value.code == "invalid_json"


def test_fake_gateway_400_missing_model(gw: RunningGateway) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert_openai_error(response, 400, "missing_required_parameter", "model")
        response = http.post("/v1/chat/completions", json={"model": 7, "messages": MESSAGES})
        assert_openai_error(response, 400, "invalid_type", "model")
    with pytest.raises(openai.BadRequestError, match="model"):
        gw.openai().chat.completions.create(model="", messages=MESSAGES)


def test_fake_gateway_404_unknown_model(gw: RunningGateway) -> None:
    with gw.http() as http:
        response = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        error = assert_openai_error(response, 404, "model_not_found", "model")
        assert "nope" in error["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        gw.openai().chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


def test_fake_gateway_503_no_healthy_backend(gw: RunningGateway) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json={"model": "dead", "messages": MESSAGES})
        error = assert_openai_error(response, 503, "no_healthy_backend")
        assert error["type"] == "server_error"
        assert response.headers["x-homellm-attempts"] == "0"
    with pytest.raises(openai.InternalServerError) as caught:
        gw.openai().chat.completions.create(model="dead", messages=MESSAGES)
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        gw.openai().chat.completions.create(model="dead", messages=MESSAGES, stream=True)


def test_fake_gateway_504_upstream_timeout(harness: Harness) -> None:
    fake = harness.fake(name="fake-hanging", hang_s=30)
    gw = harness.gateway([info(fake, "tiny/0")], first_token_s=0.2, fail_threshold=10)
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
        assert_openai_error(response, 504, "upstream_timeout")
        assert response.headers["x-homellm-backend"] == "tiny/0"
    with pytest.raises(openai.APIStatusError) as caught:
        gw.openai().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert caught.value.status_code == 504
    gw.wait_idle()


def test_fake_gateway_413_and_405(gw: RunningGateway) -> None:
    gw.gw.configure(gw.gw.config.model_copy(
        update={"limits": LimitsConfig(max_body_bytes=1024)}))
    with gw.http() as http:
        assert http.get("/v1/completions").status_code == 405
        big = {"model": MODEL, "prompt": "x" * 2000}
        assert_openai_error(http.post("/v1/completions", json=big), 413, "request_too_large")


def test_fake_gateway_mounted_under_a_prefix_still_proxies(harness: Harness) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    fake = harness.fake(name="fake-a", tokens=3)
    gw = harness.gateway([info(fake, "tiny/0")],
                         wrap=lambda app: Starlette(routes=[Mount("/gw", app=app)]))
    with gw.http() as http:
        response = http.post("/gw/v1/chat/completions",
                             json={"model": MODEL, "messages": MESSAGES, "stream": True})
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        assert http.post("/gw/v1/completions", content=b"{").status_code == 400
        assert http.get("/gw/v1/models").json()["data"][0]["id"] == MODEL


def test_fake_gateway_internal_error_is_an_openai_500(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gw._proxy, "serve", broken)
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    assert_openai_error(response, 500, "internal_error")
