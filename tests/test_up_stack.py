"""`running_stack` with remote (`url:`) replicas in front of a FAKE backend
(homellm.gateway.fakebackend): the first request after start is routed, never a 503."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from homellm.config import parse_stack
from homellm.gateway.fakebackend import FakeBackend
from homellm.up import running_stack
from tests.conftest import free_port


def test_first_request_right_after_start_is_served(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeBackend(name="remote", health_delay_s=0.5)  # a busy engine
        await fake.start()
        try:
            stack = parse_stack(f"models:\n  m:\n    source: x/y\n    engine: vllm\n"
                                f"    replicas: [{{url: '{fake.base_url}'}}]\n"
                                f"gateway:\n  listen: 127.0.0.1:{free_port()}\n"
                                "  health: {interval_s: 30}\n")
            async with running_stack(stack, tmp_path / "run") as running, \
                    httpx.AsyncClient(timeout=10) as client:
                reply = await client.post(f"{running.url}/v1/chat/completions", json={
                    "model": "m", "max_tokens": 2, "messages": [{"role": "user",
                                                                 "content": "hi"}]})
                assert reply.status_code == 200, reply.text
                assert reply.headers["x-homellm-backend"] == "m/0"
        finally:
            await fake.stop()

    asyncio.run(scenario())
