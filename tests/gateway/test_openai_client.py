"""The official openai client (sync and async, stream and not) gets answers through the gateway,
which forwards to FAKE backends (homellm.gateway.fakebackend); plus the small admin routes."""

from __future__ import annotations

import asyncio
import json

from tests.gateway.conftest import MODEL, Harness, info


def test_openai_sync_chat_and_completions_through_gateway_to_fake(harness: Harness) -> None:
    fake = harness.fake(name="fake-a", tokens=8)
    gw = harness.gateway([info(fake, "tiny/0", upstream_model="./tiny")])
    client = gw.openai()

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].message.content == "t0 t1 t2 t3 t4 "
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    assert fake.last_request is not None and fake.last_request["model"] == "./tiny"

    text = client.completions.create(model=MODEL, prompt="hello", max_tokens=3)
    assert text.choices[0].text == "t0 t1 t2 "

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "".join(f"t{i} " for i in range(8))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8

    pieces = client.completions.create(model=MODEL, prompt="x", max_tokens=4, stream=True)
    assert "".join(p.choices[0].text for p in pieces) == "t0 t1 t2 t3 "
    gw.wait_idle()
    assert gw.gw.served_by["tiny/0"] == 4
    assert gw.state("tiny/0")["successes"] == 4


def test_openai_async_stream_and_not_through_gateway_to_fake(harness: Harness) -> None:
    fake = harness.fake(name="fake-a", tokens=6)
    gw = harness.gateway([info(fake, "tiny/0")])

    async def main() -> tuple[str, list[str]]:
        async with gw.async_openai() as client:
            chat = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            many = await asyncio.gather(
                *(
                    client.completions.create(model=MODEL, prompt="p", max_tokens=2)
                    for _ in range(8)
                )
            )
            assert all(m.choices[0].text == "t0 t1 " for m in many)
            return chat.choices[0].message.content or "", parts

    content, parts = asyncio.run(main())
    assert content == "t0 t1 t2 t3 t4 t5 "
    assert "".join(parts) == content
    gw.wait_idle()
    assert gw.gw.served_by["tiny/0"] == 10


def test_embeddings_pass_through_to_fake(harness: Harness) -> None:
    fake = harness.fake(name="fake-emb")
    gw = harness.gateway([info(fake, "emb/0", model="emb", upstream_model="fake-emb-upstream")])
    result = gw.openai().embeddings.create(model="emb", input=["a", "b"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding == [0.0, 0.5, 1.0, 1.0]
    assert fake.last_request == {
        "model": "fake-emb-upstream",
        "input": ["a", "b"],
        "encoding_format": "float",
    }


def test_models_health_ready_routes_with_fake(harness: Harness) -> None:
    fake = harness.fake(name="fake-a")
    gw = harness.gateway([info(fake, "tiny/0"), info(fake, "emb/0", model="emb")])
    models = gw.openai().models.list()
    assert sorted(m.id for m in models.data) == ["emb", "tiny"]
    assert all(m.owned_by == "homellm" for m in models.data)
    with gw.http() as http:
        raw = http.get("/v1/models").json()
        assert raw["object"] == "list" and raw["data"][0]["object"] == "model"
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["models"] == {
            "tiny": {"healthy": 1, "total": 1},
            "emb": {"healthy": 1, "total": 1},
        }
        missing = http.get("/v1/nothing")
        assert missing.status_code == 404 and "error" in missing.json()
        assert http.get("/v1/chat/completions").status_code == 405

    fake.healthy = False
    gw.wait_state("tiny/0", "down")
    gw.wait_state("emb/0", "down")
    with gw.http() as http:
        ready = http.get("/ready")
        assert ready.status_code == 503
        assert json.loads(ready.content)["models"]["tiny"] == {"healthy": 0, "total": 1}
        assert http.get("/health").status_code == 200
